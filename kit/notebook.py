"""Notebook mode: the kit inside a Kaggle notebook or script kernel.

Kaggle mounts a notebook's inputs read-only under /kaggle/input/ (the competition at
/kaggle/input/<slug>/, each attached dataset at /kaggle/input/<dataset>/) and keeps what it writes
in /kaggle/working/, which is also where a code competition looks for submission.csv. The kit is in
notebook mode when /kaggle/input exists or $KAGGLE_KERNEL_RUN_TYPE is set (Kaggle sets it); then

  - the project root (runs/, folds/, .cache/, submissions/) is /kaggle/working, unless $FACEKIT_ROOT says otherwise;
  - without --data the competition is found under /kaggle/input (find_competition_input);
  - `best` and `ensemble` also leave the submission at /kaggle/working/submission.csv (kit/submission.py);
  - every command starts with one line saying where the data and the outputs are.

$FACEKIT_KAGGLE_ROOT replaces /kaggle (tests point it at a temporary folder). Where the mode is told
(in_notebook, the /kaggle folders) is kit/paths.py's: the project root depends on it.
"""
from __future__ import annotations

import os
from pathlib import Path

from kit.paths import DEFAULT_COMPETITION, in_notebook, input_dir, project_root

SUBMISSION_NAME = "submission.csv"


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def competition_candidates(root: Path | None = None) -> list[Path]:
    """Every folder under /kaggle/input holding a train.csv: an input's top (files at the top), a folder
    one level inside it (face_dataset/), or two levels (an input grouped as competitions/<slug>/...).
    The search stops descending where it finds one, and never lists a folder's files."""
    root = input_dir() if root is None else root
    found = []

    def search(folder: Path, depth: int) -> None:
        if (folder / "train.csv").is_file():
            found.append(folder)
            return
        if depth < 3:
            for sub in _subdirs(folder):
                search(sub, depth + 1)

    for mounted in _subdirs(root):
        search(mounted, 1)
    return found


def competition_name(folder: Path) -> str:
    """The name runs and folds files use: the folder holding train.csv, or its parent for face_dataset/."""
    return folder.parent.name if folder.name == "face_dataset" else folder.name


def find_competition_input(slug: str, root: Path | None = None) -> Path | None:
    """The competition's folder under /kaggle/input: the only input holding a train.csv, else the one
    named `slug`; None where neither is there. Several candidates and none named `slug` is a DataError."""
    from kit.errors import DataError

    root = input_dir() if root is None else root
    candidates = competition_candidates(root)
    if len(candidates) == 1:
        return candidates[0]
    named = [c for c in candidates if slug in c.relative_to(root).parts]
    if len(named) == 1:
        return named[0]
    if not candidates:
        return None
    listed = ", ".join(str(c) for c in candidates)
    raise DataError(f"several inputs under {root} hold a train.csv ({listed}) and none is named '{slug}'; "
                    "pass --data with the one you mean, or set KAGGLE_COMPETITION to its name")


def banner() -> str | None:
    """The line every command starts with in notebook mode (None elsewhere)."""
    if not in_notebook():
        return None
    from kit.errors import DataError

    slug = os.environ.get("KAGGLE_COMPETITION") or DEFAULT_COMPETITION
    try:
        folder = find_competition_input(slug)
        data = f"data {folder} (read-only)" if folder else f"no competition under {input_dir()} (pass --data)"
    except DataError as error:
        data = f"data: {error}"
    return f"kaggle notebook: {data}; runs, folds, caches and submissions in {project_root()}"
