"""Pseudo-labels, honestly: fold k's second-round model learns from the test images labelled by
first-round models that never saw fold k's rows.

    cv dlib_face --pseudo-labels dlib_age/round1,dlib_face/round1

Fold k of a first-round run is its model trained without fold k; its test predictions (test_fold<k>.csv)
are a function of the other folds' rows only. So those (averaged over the given runs, each on the same
folds file) are the only labels fold k's second-round model may learn from: the blended submission's
predictions, made by models that saw fold k, would leak fold k's labels into its out-of-fold score.
Targets are soft: the probability of male, and the age in years.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from kit.errors import RunError
from kit.files import read_json
from kit.paths import Project
from kit.rundir import TEST_COLUMNS, read_predictions, resolve_run


def pseudo_labels(specs: list[str], *, project: Project, test: pd.DataFrame, folds_sha256: str,
                  n_folds: int) -> tuple[dict[int, pd.DataFrame], str]:
    """({fold: DataFrame(cache_index, gender_prob, age)}, a hash of them) from the runs named by `specs`."""
    per_fold: dict[int, list[pd.DataFrame]] = {k: [] for k in range(n_folds)}
    for spec in specs:
        path = resolve_run(spec, project.runs)
        config = read_json(path / "config.json")
        if config.get("folds_sha256") != folds_sha256 or int(config.get("n_folds", -1)) != n_folds:
            raise RunError(f"--pseudo-labels {spec}: {path} was made on other folds ({config.get('folds_file')}); "
                           "fold k's labels must come from a model that never saw fold k's rows of these folds")
        for k in range(n_folds):
            file = path / f"test_fold{k}.csv"
            if not file.is_file():
                raise RunError(f"--pseudo-labels {spec}: {file} is missing (fold {k} of that run is not finished)")
            frame = read_predictions(file, TEST_COLUMNS, probability="gender_prob").set_index("id")
            if set(frame.index) != set(test["id"]):
                raise RunError(f"--pseudo-labels {spec}: {file} does not predict this competition's test ids")
            per_fold[k].append(frame.loc[test["id"]])
    labels, digest = {}, hashlib.sha256()
    for k, frames in per_fold.items():
        labels[k] = pd.DataFrame({"cache_index": test["cache_index"].to_numpy(),
                                  "gender_prob": np.mean([f["gender_prob"].to_numpy() for f in frames], axis=0),
                                  "age": np.mean([f["age_pred"].to_numpy() for f in frames], axis=0)})
        digest.update(labels[k].to_csv(index=False).encode())
    return labels, digest.hexdigest()[:16]
