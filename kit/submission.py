"""The submission validator: the one check every submission file passes before it is written or uploaded.

    problems = submission_problems(submission, sample)     # every reason it is not valid, or []
    validate_submission_file("submissions/x.csv", "data/.../sample_submission.csv")
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from kit.errors import SubmissionError
from kit.files import atomic_path
from kit.log import log
from kit.notebook import SUBMISSION_NAME
from kit.paths import in_notebook, working_dir

SUBMISSION_COLUMNS = ["id", "gender", "age"]
# Ages a model can predict (a regression a little below 0 for a baby, above 100 for the oldest) and ages no
# model does: past these the file is broken upstream (years in days, an unscaled output), not a prediction.
PLAUSIBLE_AGES = (-20.0, 200.0)


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
        # 0 or 1, as Kaggle reads numbers: "1" and "1.0" alike; "True", "male" or 0.5 are not a class.
        numeric = pd.to_numeric(gender.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isin(numeric, (0.0, 1.0))
        if gender.dtype == bool:
            bad[:] = True
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            problems.append(f"{int(bad.sum())} gender value(s) are not 0 or 1, first at row {row + 1}: "
                            f"{gender.iloc[row]!r}")
    if "age" in submission.columns:
        age = pd.to_numeric(submission["age"], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(age)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            problems.append(f"{int(bad.sum())} age value(s) are missing or not finite numbers, "
                            f"first at row {row + 1}: {submission['age'].iloc[row]!r}")
        low, high = PLAUSIBLE_AGES
        absurd = np.isfinite(age) & ((age < low) | (age > high))
        if absurd.any():
            row = int(np.flatnonzero(absurd)[0])
            problems.append(f"{int(absurd.sum())} age value(s) are outside {low:g}..{high:g} years, first at "
                            f"row {row + 1}: {submission['age'].iloc[row]!r} (a bug upstream, not a prediction)")
    return problems


def validate_submission(submission: pd.DataFrame, sample: pd.DataFrame, *, name: str = "submission") -> None:
    """Raise SubmissionError listing every problem; return None for a valid submission."""
    problems = submission_problems(submission, sample)
    if problems:
        raise SubmissionError(f"{name} is not a valid submission:\n  - " + "\n  - ".join(problems))


def validate_submission_file(path, sample_path) -> pd.DataFrame:
    """Read both CSVs as text and validate."""
    submission = read_csv_text(path, "the submission", na_values=[""])
    validate_submission(submission, read_sample(sample_path), name=str(path))
    return submission


def read_sample(path) -> pd.DataFrame:
    return read_csv_text(path, "sample_submission.csv")


def read_csv_text(path, what: str, **kwargs) -> pd.DataFrame:
    """A CSV as text columns; an empty or unparsable file is a SubmissionError naming it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except pd.errors.EmptyDataError:
        raise SubmissionError(f"{path} ({what}) is empty: no header, no rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SubmissionError(f"{path} ({what}) cannot be read as CSV: {err}") from None


def publish_submission(csv_path, sample_path) -> Path | None:
    """In notebook mode, copy a written submission (and its NAME.json sidecar, as submission.json) to
    /kaggle/working/submission.csv, where a code competition reads it: validated, written atomically."""
    if not in_notebook():
        return None
    csv_path = Path(csv_path)
    target = working_dir() / SUBMISSION_NAME
    if csv_path.resolve() == target.resolve():
        return target
    validate_submission_file(csv_path, sample_path)
    sidecar = csv_path.with_suffix(".json")
    if sidecar.is_file():
        with atomic_path(target.with_suffix(".json")) as tmp:
            shutil.copyfile(sidecar, tmp)
    with atomic_path(target) as tmp:
        shutil.copyfile(csv_path, tmp)
        validate_submission_file(tmp, sample_path)
    log(f"also wrote {target} (where a code competition reads the submission)")
    return target
