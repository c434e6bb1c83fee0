"""Atomic writes: permissions from the umask, a full disk named as such, stale temporaries, locks."""
import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

import kit.files
from kit.errors import DiskFullError
from kit.files import atomic_path, exclusive_lock, remove_stale_temporaries, save_torch, write_text


def test_files_follow_the_umask_not_0600(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~kit.files._umask()


def test_a_full_disk_while_writing_is_one_clear_message_and_no_partial_file(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"the disk holding {tmp_path} is full .* while writing a.txt"):
        with atomic_path(tmp_path / "a.txt"):
            no_space()
    assert list(tmp_path.iterdir()) == []


def test_torch_s_own_word_for_a_full_disk_is_understood(tmp_path, monkeypatch):
    def enforce_fail(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 12; "
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", enforce_fail)
    with pytest.raises(DiskFullError, match="is full .* while writing last.pt"):
        save_torch(tmp_path / "last.pt", {"w": torch.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100 << 20, 99 << 20, 1 << 20))
    with pytest.raises(DiskFullError, match="the checkpoint best.pt needs about 4 MiB, but the disk has only 1 MiB"):
        save_torch(tmp_path / "best.pt", {"w": torch.zeros(1 << 20)})
    assert not (tmp_path / "best.pt").exists()


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead = tmp_path / f".x.csv.{finished.pid}.k2j3.tmp"
    mine = tmp_path / f".y.csv.{os.getpid()}.k2j3.tmp"
    other = tmp_path / ".not-ours.tmp"
    for path in (dead, mine, other):
        path.write_text("")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert mine.exists() and other.exists()


def test_a_lock_held_elsewhere_is_seen_and_released_when_its_process_dies(tmp_path):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(kit.files.__file__.rsplit('/kit/', 1)[0])!r})
        from kit.files import exclusive_lock
        with exclusive_lock(__import__('pathlib').Path({str(lock)!r})):
            print('held', flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with exclusive_lock(lock, wait=False) as mine:
        assert mine is False
    holder.kill()
    holder.wait()
    with exclusive_lock(lock, wait=False) as mine:
        assert mine is True
