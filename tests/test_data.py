"""Every bad input is reported with its file and row, all at once, before any training."""
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit.data import load_competition
from kit.errors import DataError, DiskFullError
from kit.image_cache import decode_image

sys.path.insert(0, str(Path(__file__).parent))
from process_tree import kill_all, wait_for_children, wait_gone  # noqa: E402


def load(path, project, **kwargs):
    return load_competition(str(path), project_root=project, size=32, **kwargs)


def edit_csv(path, row, column, value):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


def test_loads_folder_parent_and_zip_alike(tiny_competition, project, tmp_path):
    comp, train_images, test_images = load(tiny_competition, project)
    assert len(comp.train) == 80 and len(comp.test) == 20
    assert train_images.shape == (80, 32, 32, 3) and train_images.dtype == np.uint8
    assert comp.name == tiny_competition.parent.name  # face_dataset/ is named after its parent
    via_parent, _, _ = load(tiny_competition.parent, project)
    assert via_parent.root == tiny_competition
    archive = tmp_path / "my-comp.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in tiny_competition.rglob("*"):
            z.write(file, "face_dataset/" + str(file.relative_to(tiny_competition)))
    via_zip, zip_images, _ = load(archive, project)
    assert via_zip.name == "my-comp" and np.array_equal(zip_images, train_images)


def test_cached_images_are_memory_mapped_and_reused(tiny_competition, project):
    _, first, _ = load(tiny_competition, project)
    assert isinstance(first, np.memmap)
    files = sorted((project / ".cache" / "images").glob("*.npy"))
    _, second, _ = load(tiny_competition, project)
    assert sorted((project / ".cache" / "images").glob("*.npy")) == files
    assert np.array_equal(first[5], decode_image(tiny_competition / "train/00005.jpg", 32))


def test_a_changed_image_gets_a_new_cache(competition_copy, project):
    _, before, _ = load(competition_copy, project)
    shutil.copy(competition_copy / "train/00001.jpg", competition_copy / "train/00000.jpg")
    _, after, _ = load(competition_copy, project)
    assert np.array_equal(after[0], after[1]) and not np.array_equal(before[0], after[0])


@pytest.mark.parametrize("column, value, message", [
    ("gender", "2", "train.csv line 5 (id '3'): gender '2' is not 0 or 1"),
    ("gender", "male", "gender 'male' is not 0 or 1"),
    ("age", "", "train.csv line 5 (id '3'): age is missing"),
    ("age", "forty", "age 'forty' is not a number"),
    ("age", "-3", "age '-3' is negative"),
    ("age", "140", "age '140' is absurd (> 120)"),
    ("id", "0", "train.csv line 5 (id '0'): duplicate id"),
])
def test_bad_labels_name_file_line_and_value(competition_copy, project, column, value, message):
    edit_csv(competition_copy / "train.csv", 3, column, value)
    with pytest.raises(DataError) as caught:
        load(competition_copy, project)
    assert message in str(caught.value)
    assert not (project / ".cache" / "images").exists()  # stopped before decoding anything


def test_missing_column_and_missing_file(competition_copy, project):
    frame = pd.read_csv(competition_copy / "train.csv").drop(columns="age")
    frame.to_csv(competition_copy / "train.csv", index=False)
    (competition_copy / "test.csv").unlink()
    with pytest.raises(DataError) as caught:
        load(competition_copy, project)
    text = str(caught.value)
    assert "train.csv: missing column(s) ['age']" in text and "test.csv: file is missing" in text


def test_all_problems_are_reported_at_once(competition_copy, project):
    edit_csv(competition_copy / "train.csv", 0, "gender", "x")
    edit_csv(competition_copy / "train.csv", 7, "age", "500")
    edit_csv(competition_copy / "test.csv", 2, "id", "1")
    (competition_copy / "train/00009.jpg").unlink()
    with pytest.raises(DataError) as caught:
        load(competition_copy, project)
    text = str(caught.value)
    assert "6 problem(s)" in text  # both rows of the duplicated test id are named
    assert "line 2 (id '0'): gender 'x'" in text and "line 9 (id '7'): age '500'" in text
    assert "test.csv line 4 (id '1'): duplicate id" in text
    assert "sample_submission.csv: 1 id(s) are not in test.csv, e.g. ['2']" in text
    assert "train.csv line 11 (id '9'): image train/00009.jpg is missing" in text   # with the CSVs' problems
    assert not (project / ".cache" / "images").exists()


@pytest.mark.parametrize("path", ["/etc/passwd", "../../x.jpg", "train/../../outside.jpg"])
def test_a_full_path_outside_the_competition_folder_is_refused(competition_copy, project, path):
    edit_csv(competition_copy / "train.csv", 4, "full_path", path)
    with pytest.raises(DataError, match=r"train.csv line 6 \(id '4'\): full_path .* points outside the competition"):
        load(competition_copy, project)
    assert not (project / ".cache" / "images").exists()


def test_sample_submission_is_checked_before_any_decoding(competition_copy, project):
    sample = pd.read_csv(competition_copy / "sample_submission.csv")
    sample.drop(index=[3]).to_csv(competition_copy / "sample_submission.csv", index=False)
    with pytest.raises(DataError, match=r"sample_submission.csv: 1 id\(s\) of test.csv are missing, e.g. \['3'\]"):
        load(competition_copy, project)
    (competition_copy / "sample_submission.csv").unlink()
    with pytest.raises(DataError, match="sample_submission.csv: file is missing"):
        load(competition_copy, project)
    assert not (project / ".cache" / "images").exists()


def test_too_few_rows_for_the_folds_is_found_before_decoding(competition_copy, project):
    with pytest.raises(DataError, match="80 training row\\(s\\) cannot be split into 100 folds"):
        load(competition_copy, project, folds=100)
    assert not (project / ".cache" / "images").exists()


def test_the_fingerprint_follows_ids_labels_and_pixels(competition_copy, project):
    first, _, _ = load(competition_copy, project)
    assert load(competition_copy, project)[0].fingerprint == first.fingerprint
    shutil.copy(competition_copy / "train/00001.jpg", competition_copy / "train/00000.jpg")   # same ids, other image
    other_image = load(competition_copy, project)[0].fingerprint
    edit_csv(competition_copy / "train.csv", 5, "age", "77")
    other_label = load(competition_copy, project)[0].fingerprint
    assert len({first.fingerprint, other_image, other_label}) == 3


def break_images(folder):
    (folder / "train/00002.jpg").unlink()                                    # missing
    data = (folder / "train/00004.jpg").read_bytes()
    (folder / "train/00004.jpg").write_bytes(data[: len(data) // 2])          # truncated JPEG
    (folder / "train/00006.jpg").write_text("this is not an image")          # not an image


def test_bad_train_images_are_errors_with_rows(competition_copy, project):
    break_images(competition_copy)
    with pytest.raises(DataError) as caught:
        load(competition_copy, project)
    text = str(caught.value)
    assert "3 image(s) are missing or unreadable" in text
    assert "train.csv line 4 (id '2'): image train/00002.jpg is missing" in text
    assert "train.csv line 6 (id '4'): image train/00004.jpg is unreadable" in text and "truncated" in text
    assert "train.csv line 8 (id '6'): image train/00006.jpg is unreadable" in text
    assert "--drop-bad-rows" in text


def test_drop_bad_rows_drops_and_counts(competition_copy, project, capsys):
    break_images(competition_copy)
    comp, images, _ = load(competition_copy, project, drop_bad_rows=True)
    assert len(comp.train) == 77 and len(comp.dropped) == 3
    assert not {"2", "4", "6"} & set(comp.train["id"])
    assert "dropped 3 train row(s)" in capsys.readouterr().out
    # rows keep pointing at their own cached image
    row = comp.train.set_index("id").loc["7", "cache_index"]
    assert np.array_equal(images[row], decode_image(competition_copy / "train/00007.jpg", 32))


def test_a_bad_test_image_is_always_an_error(competition_copy, project):
    (competition_copy / "test/00003.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"test.csv line 5 \(id '3'\): image test/00003.jpg is unreadable"):
        load(competition_copy, project, drop_bad_rows=True)


def test_data_path_that_does_not_exist(project):
    with pytest.raises(DataError, match="--data /nowhere: no such file or folder"):
        load("/nowhere", project)


def test_a_full_disk_while_decoding_stops_at_once_and_leaves_no_partial_cache(competition_copy, project, monkeypatch):
    """The array's space is reserved before decoding: ENOSPC there, not a Bus error in a worker later."""
    import errno
    import os

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(DiskFullError, match=r"the disk holding .*images is full .* while writing the image cache"):
        load(competition_copy, project)
    assert [p.name for p in (project / ".cache" / "images").iterdir() if not p.name.endswith(".lock")] == []


def test_a_disk_too_small_for_the_cache_is_refused_before_decoding(competition_copy, tmp_path):
    """A real 1 MiB filesystem (tmpfs, in a mount namespace of its own) under the project."""
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("needs unshare --mount (root) to mount a small tmpfs")
    project = tmp_path / "small"
    project.mkdir()
    script = (f"mount -t tmpfs -o size=1m tmpfs {project} && exec {sys.executable} -m kit cv scratch --epochs 1 "
              f"--size 64 --data {competition_copy}")
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={"FACEKIT_ROOT": str(project), "PYTHONPATH": str(Path(__file__).parents[1]),
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "the image cache of 80 images (" in done.stderr and "needs about 1 MiB, but the disk has only" in done.stderr
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- zips that cannot be extracted
def cv_on(data, project, monkeypatch, capsys) -> tuple[int, str]:
    from kit.__main__ import main

    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    code = main(["cv", "scratch", "--data", str(data), "--epochs", "1"])
    return code, capsys.readouterr().err


def test_a_zip_with_a_bad_crc_is_one_error_line(tmp_path, project, monkeypatch, capsys):
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("face_dataset/train.csv", "id,full_path,gender,age\n" * 20)
    data = archive.read_bytes()
    where = data.index(b"id,full_path") + 5
    archive.write_bytes(data[:where] + b"X" + data[where + 1:])         # one byte changed: its CRC no longer fits
    code, err = cv_on(archive, project, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --data {archive}: member face_dataset/train.csv cannot be extracted (BadZipFile")
    assert [p.name for p in (project / ".cache" / "extracted").iterdir()] == []


def test_a_zip_holding_a_link_and_a_file_under_it_is_one_error_line(tmp_path, project, monkeypatch, capsys):
    import stat

    archive = tmp_path / "linked.zip"
    with zipfile.ZipFile(archive, "w") as z:
        link = zipfile.ZipInfo("face_dataset/train")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc")
        z.writestr("face_dataset/train/00000.jpg", "not an image")
    code, err = cv_on(archive, project, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "member face_dataset/train/00000.jpg cannot be extracted" in err
    assert "the zip holds face_dataset/train as a symbolic link, not a folder" in err


EXTRACT_SLOWLY = """
import sys, time, zipfile
from pathlib import Path
from kit.data import extract_zip
extract = zipfile.ZipFile._extract_member   # what extract and extractall both call
def slow(self, member, path, pwd):
    done = extract(self, member, path, pwd)
    print("extracted one", flush=True)
    time.sleep(60)
    return done
zipfile.ZipFile._extract_member = slow
extract_zip(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_a_zip_half_extracted_by_a_killed_process_is_cleaned(tiny_competition, project, tmp_path):
    from kit.data import extract_zip

    archive = tmp_path / "comp.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(tiny_competition.rglob("*")):
            z.write(file, "face_dataset/" + str(file.relative_to(tiny_competition)))
    cache = project / ".cache" / "extracted"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    killed = subprocess.Popen([sys.executable, "-c", EXTRACT_SLOWLY, str(archive), str(cache)], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert "extracted one\n" in iter(killed.stdout.readline, "")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    [left] = cache.iterdir()
    assert str(killed.pid) in left.name                       # the killed process left its half extraction
    folder = extract_zip(archive, cache)
    assert list(cache.iterdir()) == [folder] and (folder / "face_dataset" / "train.csv").is_file()


DECODE_SLOWLY = """
import sys, time
from pathlib import Path
import kit.image_cache as image_cache
decode = image_cache.decode_image
def slow(path, size):
    time.sleep(0.05)
    return decode(path, size)
image_cache.decode_image = slow    # the pool's processes are forked: they decode slowly too
root = Path(sys.argv[1])
paths = sorted(str(p.relative_to(root)) for p in root.glob("train/*.jpg")) * 5
image_cache.cached_images(root, paths, 32, Path(sys.argv[2]), "slow", workers=2)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_the_decoding_pool_dies_with_its_parent(tiny_competition, tmp_path, signum):
    """kill -9 (the pool cannot be told) or SIGTERM (`timeout`, `kill`) while images are decoded."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    parent = subprocess.Popen([sys.executable, "-c", DECODE_SLOWLY, str(tiny_competition), str(tmp_path / "cache")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pool = wait_for_children(parent.pid, 2, 60)
    try:
        assert len(pool) == 2, "the pool never started"
        os.kill(parent.pid, signum)
        parent.wait(timeout=30)
        assert wait_gone(pool, 5) == []
        if signum == signal.SIGTERM:        # stopped cleanly: no half-written cache either
            assert not list((tmp_path / "cache").glob(".*.tmp"))
    finally:
        kill_all([parent.pid, *pool])
