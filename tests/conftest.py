"""Shared fixtures: small synthetic competitions made on the fly (no real data needed)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit.sample import make_sample

# Tests must be quick and repeatable on 2 cores: one thread each, no progress bars.
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_competition(tmp_path_factory) -> Path:
    """A read-only-by-convention synthetic competition: 80 train and 20 test images."""
    return make_sample(tmp_path_factory.mktemp("tiny") / "face_dataset", n_train=80, n_test=20, seed=1)


@pytest.fixture
def competition_copy(tmp_path, tiny_competition) -> Path:
    """A private copy of the tiny competition that a test may break."""
    import shutil

    target = tmp_path / "face_dataset"
    shutil.copytree(tiny_competition, target)
    return target


@pytest.fixture
def project(tmp_path) -> Path:
    """An empty project root (runs/, folds/, .cache/ are created inside it)."""
    root = tmp_path / "project"
    root.mkdir()
    return root
