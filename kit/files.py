"""Writes a reader (or a crash) never sees half of, and a full disk that says so.

Everything the kit writes for a user (folds, configs, predictions, checkpoints, submissions, the
ledger) goes through here: write to a temporary file beside the target, fsync, then rename. The
temporary file is named `.<target>.<pid>.<random>.tmp`, so a later process can tell one left by a
process that was killed (`remove_stale_temporaries`) from one still being written. Files get the
permissions the user's umask gives (tempfile would make them 0600).

A write that runs out of disk space raises DiskFullError naming the folder, and leaves no partial file.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from kit.errors import DiskFullError, RunError

TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC, or torch.save's way of reporting it ("[enforce fail at inline_container.cc] ... file write
    failed", with the OS error lost)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left" in text or ("inline_container" in text and "write" in text)


def disk_full(folder: Path, what: str, err: BaseException | None = None) -> DiskFullError:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    return DiskFullError(f"the disk holding {folder} is full ({free / 2**20:.0f} MiB free) while writing {what}"
                         + (f" ({err})" if err is not None and not isinstance(err, OSError) else "")
                         + "; free some space (old runs, .cache/images/) and run the command again: "
                         "finished work is kept")


def check_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """Refuse before writing `needed_bytes` into `folder` (plus 5% and 64 MiB to spare) where they do not fit."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes * 1.05 + (64 << 20):
        raise DiskFullError(f"{folder}: {what} needs about {needed_bytes / 2**20:.0f} MiB, but the disk has only "
                            f"{free / 2**20:.0f} MiB free; free some space or point the kit elsewhere "
                            "(FACEKIT_ROOT)")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the target's folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        if is_disk_full(err):
            raise disk_full(path.parent, path.name, err) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files (and folders, such as a zip half extracted) of writers whose process
    is gone (killed mid-write)."""
    if not folder.is_dir():
        return []
    removed = []
    for candidate in list(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        match = TEMPORARY.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not process_is_alive(int(match.group(1))):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path):
    """A JSON file the kit wrote; a damaged one is a RunError naming it (not a bare JSONDecodeError)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is damaged ({err}); delete it (the step that wrote it runs again) or restore "
                       "it from a copy") from None


def write_csv(path, frame, **kwargs) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) checkpoint object: what torch.save will write, about."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_torch(path, obj) -> None:
    import torch

    path = Path(path)
    check_free_space(path.parent, tensor_bytes(obj), f"the checkpoint {path.name}")
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextmanager
def exclusive_lock(path: Path, *, wait: bool = True):
    """Hold an exclusive advisory lock on `path` (created if needed) for the block; with wait=False,
    yield False at once when another process holds it. The lock goes with the process, so a killed
    holder never leaves it stuck."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextmanager
def staging_folder(dest: Path):
    """A fresh folder beside `dest`, on its file system so that what is made in it renames into place whole;
    removed afterwards with whatever is left in it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(made: Path, dest: Path, staging: Path) -> None:
    """Put the folder `made` in the place of `dest`, whole. A folder cannot be renamed onto a full one: the old
    `dest` is moved into `staging` first (staging_folder's, removed with it)."""
    if dest.exists():
        os.replace(dest, staging / "previous")
    os.replace(made, dest)


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
