"""Where a project's files live: one root for every command.

    runs/<model>/<name>/   cross-validation runs          folds/       persisted folds files
    tuning/<study>/        tuning studies                 submissions/ submissions, sidecars, ledger
    data/<slug>/           downloaded competitions        .cache/      extracted zips, image caches

The root is $FACEKIT_ROOT if set, else /kaggle/working in a Kaggle notebook (kit/notebook.py: the
input there is read-only; a notebook is told by /kaggle/input or $KAGGLE_KERNEL_RUN_TYPE, and
$FACEKIT_KAGGLE_ROOT replaces /kaggle for tests), else the current directory. Every command and library function that
reads or writes these takes a `root` (default: this one), so tests and scripts never need to chdir.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "FACEKIT_ROOT"
DEFAULT_COMPETITION = "sep-25-dl-gen-ai-nppe-1"   # without --competition, $KAGGLE_COMPETITION or --data
KAGGLE_ROOT_ENV = "FACEKIT_KAGGLE_ROOT"


def kaggle_root() -> Path:
    return Path(os.environ.get(KAGGLE_ROOT_ENV) or "/kaggle")


def input_dir() -> Path:
    return kaggle_root() / "input"


def working_dir() -> Path:
    return kaggle_root() / "working"


def in_notebook() -> bool:
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or input_dir().is_dir()


def project_root() -> Path:
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    return working_dir() if in_notebook() else Path.cwd()


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> Project:
        return cls(Path(root) if root is not None else project_root())

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def folds(self) -> Path:
        return self.root / "folds"

    @property
    def tuning(self) -> Path:
        return self.root / "tuning"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def ledger(self) -> Path:
        return self.submissions / "ledger.csv"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def cache(self) -> Path:
        return self.root / ".cache"

    def run_dir(self, model: str, name: str) -> Path:
        return self.runs / model / name
