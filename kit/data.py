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
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kit import notebook
from kit.errors import DataError
from kit.image_cache import cached_images
from kit.log import log

DEFAULT_COMPETITION = "sep-25-dl-gen-ai-nppe-1"
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
    """Extract once; the folder is keyed by the zip's name, size and mtime, and appears atomically."""
    stat = zip_path.stat()
    key = hashlib.sha1(f"{zip_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root / f"{zip_path.stem}-{key}"
    if target.is_dir():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
    try:
        log(f"extracting {zip_path} into {target} (once)")
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # another process won the race otherwise
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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


def summarise(found: dict[str, list[str]]) -> list[str]:
    lines = []
    for kind, items in found.items():
        lines.extend(items[:MAX_LISTED])
        if len(items) > MAX_LISTED:
            lines.append(f"... and {len(items) - MAX_LISTED} more rows with a {kind} problem")
    return lines


def load_competition(data: str | None, *, project_root: Path, size: int,
                     drop_bad_rows: bool = False, cache_root: Path | None = None):
    """Locate, validate and cache a competition. Returns (Competition, train_images, test_images).

    Images come back as read-only memory-mapped uint8 arrays indexed by each frame's cache_index.
    """
    root, name, is_sample = locate(data, project_root=project_root)
    problems: list[str] = []
    train = read_csv_checked(root / "train.csv", ["id", "full_path", "gender", "age"], problems)
    test = read_csv_checked(root / "test.csv", ["id", "full_path"], problems)
    if train is not None:
        problems += row_problems(train, root / "train.csv", labelled=True)
    if test is not None:
        problems += row_problems(test, root / "test.csv", labelled=False)
    if problems or train is None or test is None:
        raise DataError(f"{root}: {len(problems)} problem(s) in the competition files:\n  - "
                        + "\n  - ".join(problems))

    cache_root = cache_root or project_root / ".cache" / "images"
    train_images, train_bad = cached_images(root, train["full_path"].tolist(), size, cache_root,
                                            f"{name}-train")
    test_images, test_bad = cached_images(root, test["full_path"].tolist(), size, cache_root,
                                          f"{name}-test")
    image_problems = [f"train.csv line {i + 2} (id {train['id'].iat[i]!r}): {err}" for i, err in train_bad]
    image_problems += [f"test.csv line {i + 2} (id {test['id'].iat[i]!r}): {err}" for i, err in test_bad]
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
    return Competition(name, root, train, test, is_sample, dropped), train_images, test_images
