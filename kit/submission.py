"""The submission validator: the one check every submission file passes before it is written or uploaded.

    problems = submission_problems(submission, sample)     # every reason it is not valid, or []
    validate_submission_file("submissions/x.csv", "data/.../sample_submission.csv")
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kit.errors import SubmissionError

SUBMISSION_COLUMNS = ["id", "gender", "age"]


def submission_problems(submission: pd.DataFrame, sample: pd.DataFrame) -> list[str]:
    """Every reason `submission` is not a valid file for the competition of `sample`."""
    problems = []
    columns = list(submission.columns)
    if columns != SUBMISSION_COLUMNS:
        problems.append(f"columns are {columns}, expected exactly {SUBMISSION_COLUMNS} in that order")
    if "id" not in submission.columns:
        return problems
    # Ids compare as text: that is what the file holds, and an int 7 and a "7" are the same id.
    ids = submission["id"].astype(str)
    expected = sample["id"].astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        problems.append(f"{len(duplicated)} duplicated id(s), e.g. {list(duplicated[:5])}")
    missing = sorted(set(expected) - set(ids), key=str)
    if missing:
        problems.append(f"{len(missing)} id(s) of sample_submission.csv are missing, e.g. {missing[:5]}")
    extra = sorted(set(ids) - set(expected), key=str)
    if extra:
        problems.append(f"{len(extra)} id(s) are not in sample_submission.csv, e.g. {extra[:5]}")
    if not (missing or extra or len(duplicated)) and len(ids) == len(expected):
        out_of_order = np.flatnonzero(ids.to_numpy() != expected.to_numpy())
        if len(out_of_order):
            row = int(out_of_order[0])
            problems.append(f"rows are not in sample_submission.csv's order: row {row + 1} has id "
                            f"{ids.iloc[row]!r}, expected {expected.iloc[row]!r}")
    if "gender" in submission.columns:
        gender = submission["gender"]
        # The text must be exactly 0 or 1: a float column would be written as "1.0", a bool as "True".
        bad = ~gender.astype(str).str.fullmatch(r"[01]", na=False).to_numpy(dtype=bool)
        if gender.dtype == bool:
            bad[:] = True
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            problems.append(f"{int(bad.sum())} gender value(s) are not the integer 0 or 1, "
                            f"first at row {row + 1}: {gender.iloc[row]!r}")
    if "age" in submission.columns:
        age = pd.to_numeric(submission["age"], errors="coerce")
        bad = ~np.isfinite(age.to_numpy(dtype=np.float64))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            problems.append(f"{int(bad.sum())} age value(s) are missing or not finite numbers, "
                            f"first at row {row + 1}: {submission['age'].iloc[row]!r}")
    return problems


def validate_submission(submission: pd.DataFrame, sample: pd.DataFrame, *, name: str = "submission") -> None:
    """Raise SubmissionError listing every problem; return None for a valid submission."""
    problems = submission_problems(submission, sample)
    if problems:
        raise SubmissionError(f"{name} is not a valid submission:\n  - " + "\n  - ".join(problems))


def validate_submission_file(path, sample_path) -> pd.DataFrame:
    """Read both CSVs as text (so '1.0' is not taken for the integer 1) and validate."""
    submission = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    sample = read_sample(sample_path)
    validate_submission(submission, sample, name=str(path))
    return submission


def read_sample(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)
