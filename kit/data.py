"""Finding, validating and caching a competition's data.

A competition is a folder with train.csv (id, full_path, gender, age), test.csv (id, full_path),
sample_submission.csv (id, gender, age) and the images those paths name. `--data` may be that folder,
its parent (Kaggle's zip holds `face_dataset/`), or the zip itself (extracted once under .cache/).
Without --data: in a Kaggle notebook the competition under /kaggle/input (kit/notebook.py), else
data/<slug>/ (`facekit download`), else the synthetic sample.

Every problem is collected and reported at once, with file and line, before any long work starts.
The images are decoded once into a memory-mapped cache (kit/image_cache.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat as stat_module
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kit import notebook
from kit.errors import DataError
from kit.files import disk_full, is_disk_full, remove_stale_temporaries
from kit.image_cache import cached_images
from kit.log import log
from kit.paths import DEFAULT_COMPETITION

MAX_AGE = 120
MAX_LISTED = 20  # problems listed per kind; the rest are counted


@dataclass
class Competition:
    name: str
    root: Path                     # the folder holding train.csv
    train: pd.DataFrame            # id, full_path, gender, age (+ cache_index)
    test: pd.DataFrame             # id, full_path (+ cache_index)
    is_sample: bool = False
    dropped: list[str] = field(default_factory=list)
    fingerprint: str = ""          # kit.data.data_fingerprint: the ids, labels and decoded pixels

    @property
    def sample_submission(self) -> Path:
        return self.root / "sample_submission.csv"


def locate(data: str | None, *, project_root: Path) -> tuple[Path, str, bool]:
    """Resolve --data to (folder with train.csv, competition name, is the synthetic sample)."""
    if data is None:
        slug = os.environ.get("KAGGLE_COMPETITION") or DEFAULT_COMPETITION
        mounted = notebook.find_competition_input(slug) if notebook.in_notebook() else None
        if mounted is not None:  # a Kaggle notebook: the competition as Kaggle mounts it, read-only
            return mounted, notebook.competition_name(mounted), (mounted / ".synthetic").exists()
        downloaded = project_root / "data" / slug
        if downloaded.is_dir():
            return find_competition_folder(downloaded), slug, False
        if notebook.in_notebook():
            raise DataError(f"no competition files under {notebook.input_dir()}: add the competition to the "
                            "notebook's inputs (Add Input), or pass --data PATH")
        from kit.sample import ensure_sample

        return ensure_sample(project_root / "data" / "sample"), "sample", True
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"--data {data}: no such file or folder")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"--data {data}: a file, but not a zip archive")
        folder = extract_zip(path, project_root / ".cache" / "extracted")
        return find_competition_folder(folder), path.stem, False
    folder = find_competition_folder(path)
    name = folder.parent.name if folder.name == "face_dataset" else folder.name
    return folder, name, (folder / ".synthetic").exists()


def find_competition_folder(path: Path) -> Path:
    if (path / "train.csv").is_file():
        return path
    candidates = sorted(p.parent for p in path.glob("*/train.csv"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"{path}: no train.csv in it or in a folder directly below it")
    raise DataError(f"{path}: several folders hold a train.csv ({', '.join(map(str, candidates))}); "
                    "pass the one you mean with --data")


def extract_zip(zip_path: Path, cache_root: Path) -> Path:
    """Extract once; the folder is keyed by the zip's name, size and mtime, and appears atomically.

    It is extracted into `.<name>.<pid>.<random>.tmp` beside it, the name of kit/files.py's temporaries,
    so one left by a killed process is removed by the next one that looks (remove_stale_temporaries)."""
    stat = zip_path.stat()
    key = hashlib.sha1(f"{zip_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root / f"{zip_path.stem}-{key}"
    for stale in remove_stale_temporaries(cache_root):
        log(f"removed {stale}, left by an extraction that was stopped")
    if target.is_dir():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=cache_root))
    try:
        log(f"extracting {zip_path} into {target} (once)")
        extract_members(zip_path, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


ZIP_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def extract_members(zip_path: Path, folder: Path) -> None:
    """Extract every member (zipfile drops absolute and '..' parts); a damaged, encrypted or
    unextractable member is a DataError naming it (a full disk a DiskFullError)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for info in members:
                try:
                    archive.extract(info, folder)
                except ZIP_ERRORS as err:
                    if is_disk_full(err):
                        raise disk_full(folder.parent, f"the extraction of {zip_path.name}", err) from None
                    raise DataError(f"--data {zip_path}: member {info.filename} cannot be extracted "
                                    f"({type(err).__name__}: {err}){_under_a_link(info, members)}; repair or "
                                    "re-create the zip, or pass the extracted folder") from None
    except zipfile.BadZipFile as err:
        raise DataError(f"--data {zip_path}: not a readable zip archive ({err})") from None


def _under_a_link(info: zipfile.ZipInfo, members: list[zipfile.ZipInfo]) -> str:
    """Why a member may not fit: the zip also holds a symbolic link where its folder should be."""
    links = [m.filename.rstrip("/") for m in members
             if stat_module.S_ISLNK(m.external_attr >> 16) and info.filename.startswith(m.filename.rstrip("/") + "/")]
    return f"; the zip holds {links[0]} as a symbolic link, not a folder" if links else ""


# ----------------------------------------------------------------------------- validation

def read_csv_checked(path: Path, required: list[str], problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        problems.append(f"{path}: file is missing")
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many kinds for malformed CSV
        problems.append(f"{path}: cannot be read as CSV ({err})")
        return None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        problems.append(f"{path}: missing column(s) {missing} (has {list(frame.columns)})")
        return None
    return frame


def row_problems(frame: pd.DataFrame, path: Path, *, labelled: bool) -> list[str]:
    """Per-row problems; CSV line numbers count the header as line 1."""
    found: dict[str, list[str]] = {}

    def add(kind, i, text):
        found.setdefault(kind, []).append(f"{path.name} line {i + 2} (id {frame['id'].iat[i]!r}): {text}")

    ids = frame["id"]
    for i in np.flatnonzero(ids.duplicated(keep=False).to_numpy()):
        add("duplicate id", i, "duplicate id")
    for i in np.flatnonzero((ids.str.strip() == "").to_numpy()):
        add("missing id", i, "id is empty")
    if "full_path" in frame.columns:
        for i, rel in enumerate(frame["full_path"]):
            if rel.strip() == "":
                add("full_path", i, "full_path is empty")
            elif Path(rel).is_absolute() or ".." in Path(rel).parts:
                add("full_path", i, f"full_path {rel!r} points outside the competition folder (it must be a "
                                    "path relative to it)")
    if labelled:
        for i, value in enumerate(frame["gender"]):
            if value.strip() not in ("0", "1"):
                add("gender", i, f"gender {value!r} is not 0 or 1")
        ages = pd.to_numeric(frame["age"], errors="coerce")
        for i, (text, age) in enumerate(zip(frame["age"], ages)):
            if text.strip() == "":
                add("age", i, "age is missing")
            elif not np.isfinite(age):
                add("age", i, f"age {text!r} is not a number")
            elif age < 0:
                add("age", i, f"age {text!r} is negative")
            elif age > MAX_AGE:
                add("age", i, f"age {text!r} is absurd (> {MAX_AGE})")
    return summarise(found)


def sample_problems(sample: pd.DataFrame, test: pd.DataFrame | None, path: Path) -> list[str]:
    """sample_submission.csv must list exactly test.csv's ids: a submission is checked against it."""
    if test is None:
        return []
    sample_ids, test_ids = set(sample["id"]), set(test["id"])
    problems = []
    missing, extra = sorted(test_ids - sample_ids), sorted(sample_ids - test_ids)
    if missing:
        problems.append(f"{path}: {len(missing)} id(s) of test.csv are missing, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{path}: {len(extra)} id(s) are not in test.csv, e.g. {extra[:5]}")
    if sample["id"].duplicated().any():
        problems.append(f"{path}: duplicated ids, e.g. {sorted(set(sample['id'][sample['id'].duplicated()]))[:5]}")
    return problems


def missing_images(frame: pd.DataFrame, root: Path, csv_name: str) -> list[tuple[int, str]]:
    """(row, problem) for the rows whose image file is not there: found before any decoding."""
    return [(i, f"image {rel} is missing") for i, rel in enumerate(frame["full_path"])
            if rel.strip() and not (root / rel).is_file()]


def image_lines(frame: pd.DataFrame, csv_name: str, bad: list[tuple[int, str]]) -> list[str]:
    return [f"{csv_name} line {i + 2} (id {frame['id'].iat[i]!r}): {err}" for i, err in bad]


def summarise(found: dict[str, list[str]]) -> list[str]:
    lines = []
    for kind, items in found.items():
        lines.extend(items[:MAX_LISTED])
        if len(items) > MAX_LISTED:
            lines.append(f"... and {len(items) - MAX_LISTED} more rows with a {kind} problem")
    return lines


def check_files(root: Path, *, folds: int | None, drop_bad_rows: bool):
    """Read and check every CSV and find missing images, reporting all problems at once, before decoding.
    Returns (train, test) as text frames."""
    problems: list[str] = []
    train = read_csv_checked(root / "train.csv", ["id", "full_path", "gender", "age"], problems)
    test = read_csv_checked(root / "test.csv", ["id", "full_path"], problems)
    sample = read_csv_checked(root / "sample_submission.csv", ["id", "gender", "age"], problems)
    if train is not None:
        problems += row_problems(train, root / "train.csv", labelled=True)
        if folds is not None and len(train) < folds:
            problems.append(f"{root / 'train.csv'}: {len(train)} training row(s) cannot be split into {folds} folds")
    if test is not None:
        problems += row_problems(test, root / "test.csv", labelled=False)
    if sample is not None:
        problems += sample_problems(sample, test, root / "sample_submission.csv")
    if problems and not any("points outside the competition folder" in p for p in problems):
        # The CSVs stop the run before decoding; say which images are missing too (unreadable ones are
        # found by decoding, which then reports them together with the missing ones).
        missing = [] if test is None else image_lines(test, "test.csv", missing_images(test, root, "test.csv"))
        if train is not None and not drop_bad_rows:
            missing = image_lines(train, "train.csv", missing_images(train, root, "train.csv")) + missing
        problems += summarise({"missing image": missing})
    if problems or train is None or test is None:
        hint = ("\n(bad train images can be skipped with --drop-bad-rows; every test image is needed for a "
                "submission)" if any("is missing" in p and "image" in p for p in problems) else "")
        raise DataError(f"{root}: {len(problems)} problem(s) in the competition files:\n  - "
                        + "\n  - ".join(problems) + hint)
    return train, test


def load_competition(data: str | None, *, project_root: Path, size: int, drop_bad_rows: bool = False,
                     cache_root: Path | None = None, folds: int | None = None):
    """Locate, validate and cache a competition. Returns (Competition, train_images, test_images).

    Images come back as read-only memory-mapped uint8 arrays indexed by each frame's cache_index.
    """
    root, name, is_sample = locate(data, project_root=project_root)
    train, test = check_files(root, folds=folds, drop_bad_rows=drop_bad_rows)
    cache_root = cache_root or project_root / ".cache" / "images"
    train_cache = cached_images(root, train["full_path"].tolist(), size, cache_root, f"{name}-train")
    test_cache = cached_images(root, test["full_path"].tolist(), size, cache_root, f"{name}-test")
    train_bad, test_bad = train_cache.bad, test_cache.bad
    image_problems = image_lines(train, "train.csv", train_bad) + image_lines(test, "test.csv", test_bad)
    dropped = []
    if test_bad or (train_bad and not drop_bad_rows):
        hint = ("\n(bad train images can be skipped with --drop-bad-rows; every test image is needed "
                "for a submission)")
        raise DataError(f"{root}: {len(image_problems)} image(s) are missing or unreadable:\n  - "
                        + "\n  - ".join(image_problems[:MAX_LISTED])
                        + (f"\n  ... and {len(image_problems) - MAX_LISTED} more"
                           if len(image_problems) > MAX_LISTED else "")
                        + hint)
    train = train.assign(cache_index=np.arange(len(train)))
    test = test.assign(cache_index=np.arange(len(test)))
    if train_bad:
        dropped = image_problems
        train = train.drop(index=[i for i, _ in train_bad]).reset_index(drop=True)
        log(f"--drop-bad-rows: dropped {len(train_bad)} train row(s) with bad images")
    train = train.astype({"id": str, "gender": int})
    train["age"] = train["age"].astype(float)
    test = test.astype({"id": str})
    fingerprint = data_fingerprint(train, test, train_cache.fingerprint, test_cache.fingerprint)
    return (Competition(name, root, train, test, is_sample, dropped, fingerprint), train_cache.images,
            test_cache.images)


def data_fingerprint(train: pd.DataFrame, test: pd.DataFrame, train_pixels: str, test_pixels: str) -> str:
    """What a run is trained and scored on: the ids and labels, and the decoded pixels. Another image under
    the same id, a changed label or a dropped row changes it."""
    digest = hashlib.sha256()
    for frame, columns in ((train, ["id", "gender", "age", "cache_index"]), (test, ["id", "cache_index"])):
        digest.update(frame[columns].to_csv(index=False).encode())
    digest.update(f"{train_pixels}:{test_pixels}".encode())
    return digest.hexdigest()[:16]
