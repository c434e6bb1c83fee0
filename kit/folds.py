"""Stratified K-fold assignments, written once and reused by every model and run.

Every model's out-of-fold predictions line up only if they share the same folds, so the folds live
in `folds/<competition>-k<K>-seed<S>.csv` (id, fold) and are never regenerated with other content.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from kit.errors import FoldsError
from kit.files import write_csv
from kit.log import log

# Age bins for stratification: finer where UTKFace is dense (20-40), coarse in the tails.
AGE_BIN_EDGES = [0, 3, 10, 18, 25, 30, 35, 40, 50, 60, 70, 80, np.inf]


def strata(gender: np.ndarray, age: np.ndarray, k: int) -> np.ndarray:
    """gender x age-bin labels; strata with fewer than k members fall back to gender alone."""
    age_bin = np.digitize(age, AGE_BIN_EDGES[1:-1])
    labels = np.asarray(gender) * 100 + age_bin
    gender = np.asarray(gender)
    values, counts = np.unique(labels, return_counts=True)
    rare = np.isin(labels, values[counts < k])
    labels = np.where(rare, gender * 100 + 99, labels)
    # A pooled group that is still too small joins its gender's largest stratum.
    for g in np.unique(gender):
        pooled = labels == g * 100 + 99
        if 0 < pooled.sum() < k:
            own = labels[(gender == g) & ~pooled]
            if len(own):
                values, counts = np.unique(own, return_counts=True)
                labels[pooled] = values[np.argmax(counts)]
    return labels


def make_folds(train: pd.DataFrame, *, k: int, seed: int) -> pd.DataFrame:
    """(id, fold) for every training row, stratified on gender x age bins."""
    if len(train) < k:
        raise FoldsError(f"{len(train)} training rows cannot be split into {k} folds")
    labels = strata(train["gender"].to_numpy(), train["age"].to_numpy(), k)
    fold = np.full(len(train), -1, dtype=int)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, held_out) in enumerate(splitter.split(np.zeros(len(train)), labels)):
        fold[held_out] = f
    return pd.DataFrame({"id": train["id"].astype(str).to_numpy(), "fold": fold})


def folds_path(folds_dir: Path, competition: str, k: int, seed: int) -> Path:
    return Path(folds_dir) / f"{competition}-k{k}-seed{seed}.csv"


def same_ids_elsewhere(train: pd.DataFrame, folds_dir: Path, k: int, seed: int) -> Path | None:
    """A folds file of this K and seed saved under another competition name for exactly these training
    ids (the same competition, named by its zip locally and by its slug in a Kaggle notebook): reusing
    it keeps runs made under either name blendable."""
    ids = set(train["id"].astype(str))
    for candidate in sorted(Path(folds_dir).glob(f"*-k{k}-seed{seed}.csv")):
        try:
            saved = pd.read_csv(candidate, dtype={"id": str})
        except (OSError, ValueError):
            continue
        if list(saved.columns) == ["id", "fold"] and len(saved) == len(ids) and set(saved["id"]) == ids:
            log(f"using {candidate}: the folds file of these very training ids")
            return candidate
    return None


def folds_for(train: pd.DataFrame, *, competition: str, k: int, seed: int, folds_dir: Path) -> tuple[pd.Series, Path]:
    """The fold of each training row (aligned with `train`), from the folds file or made and saved."""
    path = folds_path(folds_dir, competition, k, seed)
    if not path.is_file():
        path = same_ids_elsewhere(train, folds_dir, k, seed) or path
    if path.is_file():
        saved = pd.read_csv(path, dtype={"id": str})
        if list(saved.columns) != ["id", "fold"] or saved["id"].duplicated().any():
            raise FoldsError(f"{path}: expected unique ids in columns id,fold; the file looks damaged")
        if set(saved["fold"]) - set(range(k)):
            raise FoldsError(f"{path}: fold numbers outside 0..{k - 1}")
        ids = set(train["id"])
        saved_ids = set(saved["id"])
        if ids != saved_ids:
            raise FoldsError(
                f"{path} was made for other training ids: {len(ids - saved_ids)} id(s) of train.csv are "
                f"not in it, {len(saved_ids - ids)} of its ids are not in train.csv. The folds file is "
                "kept as it is so earlier runs stay comparable; use another --fold-seed or --folds, or move "
                "the file away if the data really changed.")
        folds = saved
    else:
        folds = make_folds(train, k=k, seed=seed)
        write_csv(path, folds)
        log(f"wrote {path} ({k} folds stratified on gender x age bins)")
    fold_of = dict(zip(folds["id"], folds["fold"]))
    return pd.Series([fold_of[i] for i in train["id"]], index=train.index, name="fold"), path
