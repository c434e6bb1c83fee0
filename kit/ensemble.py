"""Blending runs into a submission, and the one submission validator the uploader reuses.

    python -m kit.ensemble RUN [RUN ...] [--out submissions/NAME.csv] [--weights auto|equal]

RUN is a run directory or MODEL/NAME (runs/MODEL/NAME). Within a run the K fold models' test
predictions are averaged; across runs, members (only runs on the same folds file) are blended with
weights and a gender threshold fitted on the out-of-fold predictions (kit/blend.py). The blend's
cross-validated score is cross-fitted: each fold's rows are predicted by weights, threshold and age
range fitted on the other folds, so the score is not flattered by the fit.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

import kit.blend as blending
from kit.files import atomic_path, read_json, sha256_file, write_json
from kit.metric import Scores, score, score_probabilities

SUBMISSION_COLUMNS = ["id", "gender", "age"]
OOF_COLUMNS = ["id", "fold", "gender", "age", "gender_prob", "age_pred"]
TEST_COLUMNS = ["id", "gender_prob", "age_pred"]
CONFIG_KEYS = ["model", "name", "competition", "data_dir", "folds_file", "folds_sha256", "n_folds"]
DEFAULT_RUNS_ROOT = Path("runs")
DEFAULT_SUBMISSIONS = Path("submissions")


class SubmissionError(ValueError):
    """A submission file that must not be uploaded; the message lists every problem found."""


class RunError(ValueError):
    """A run directory that cannot be blended (missing, incomplete, damaged, or on other folds)."""


# ---------------------------------------------------------------------------------------------------
# The validator (also used by the uploader)

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


# ---------------------------------------------------------------------------------------------------
# Runs

@dataclass
class Run:
    """One finished cross-validation run: its out-of-fold predictions and fold-averaged test predictions."""
    path: Path
    config: dict
    oof: pd.DataFrame      # OOF_COLUMNS, one row per training image
    test: pd.DataFrame     # id, gender_prob, age_pred: the mean over the K fold models, test.csv order

    @property
    def label(self) -> str:
        return f"{self.config['model']}/{self.config['name']}"

    def oof_scores(self) -> Scores:
        """The run's own OOF score as the harness reports it: threshold 0.5, ages unclipped."""
        return score_probabilities(self.oof["gender"], self.oof["gender_prob"], self.oof["age"], self.oof["age_pred"])


def resolve_run(spec, runs_root=DEFAULT_RUNS_ROOT) -> Path:
    """A run directory given as a path, or as MODEL/NAME under `runs_root`."""
    for candidate in (Path(spec), Path(runs_root) / spec):
        if (candidate / "config.json").is_file():
            return candidate
    raise RunError(f"run {spec!r} not found: neither {Path(spec)} nor {Path(runs_root) / spec} "
                   "is a run directory with a config.json")


def load_run(spec, runs_root=DEFAULT_RUNS_ROOT) -> Run:
    """Load and check a complete run; RunError says what is missing or wrong."""
    path = resolve_run(spec, runs_root)
    config = read_json(path / "config.json")
    absent = [key for key in CONFIG_KEYS if key not in config]
    if absent:
        raise RunError(f"{path / 'config.json'} lacks {absent}; was it written by `./run.sh cv`?")
    n_folds = int(config["n_folds"])
    missing = [f"test_fold{k}.csv" for k in range(n_folds) if not (path / f"test_fold{k}.csv").is_file()]
    missing += ["oof.csv"] if not (path / "oof.csv").is_file() else []
    if missing:
        unfinished = [k for k in range(n_folds) if not (path / f"test_fold{k}.csv").is_file()]
        raise RunError(f"run {path} is incomplete: {', '.join(missing)} missing"
                       + (f" (fold(s) {unfinished} not finished)" if unfinished else "")
                       + f". Rerun `./run.sh cv {config['model']} --name {config['name']} ...` with the "
                         "run's options to resume it; finished folds are kept.")
    oof = _read_checked(path / "oof.csv", OOF_COLUMNS, probability="gender_prob")
    problems = []
    if oof["id"].duplicated().any():
        problems.append("duplicated ids")
    if not oof["fold"].isin(range(n_folds)).all() or oof["fold"].nunique() != n_folds:
        problems.append(f"fold column does not hold each of 0..{n_folds - 1}")
    if not oof["gender"].isin([0, 1]).all():
        problems.append("true gender not 0/1")
    if problems:
        raise RunError(f"{path / 'oof.csv'}: {'; '.join(problems)}")
    test_folds = [_read_checked(path / f"test_fold{k}.csv", TEST_COLUMNS, probability="gender_prob")
                  for k in range(n_folds)]
    for k, frame in enumerate(test_folds[1:], start=1):
        if not frame["id"].equals(test_folds[0]["id"]):
            raise RunError(f"{path}: test_fold{k}.csv does not list the ids of test_fold0.csv in the same order")
    # Within a run, the K fold models' test predictions are simply averaged.
    test = test_folds[0][["id"]].copy()
    for column in ("gender_prob", "age_pred"):
        test[column] = np.mean([frame[column].to_numpy(np.float64) for frame in test_folds], axis=0)
    oof[["fold", "gender"]] = oof[["fold", "gender"]].astype(int)
    return Run(path=path, config=config, oof=oof, test=test)


def _read_checked(path: Path, columns: list[str], probability: str) -> pd.DataFrame:
    """`columns` of a predictions CSV: ids as text, the rest as finite numbers."""
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise RunError(f"{path}: missing column(s) {absent}; expected {columns}")
    frame = frame[columns].copy()
    for column in columns[1:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
    bad_rows = ~np.isfinite(frame[columns[1:]].to_numpy()).all(axis=1)
    if bad_rows.any():
        raise RunError(f"{path}: {int(bad_rows.sum())} row(s) with missing or non-finite values, "
                       f"first at data row {int(np.flatnonzero(bad_rows)[0]) + 1}")
    if not frame[probability].between(0, 1).all():
        raise RunError(f"{path}: {probability} outside [0, 1]")
    return frame


def check_blendable(runs: list[Run]) -> None:
    """Runs are blendable only on the same folds file (by sha256), the same rows and the same competition."""
    first = runs[0]
    for run in runs[1:]:
        if run.config["folds_sha256"] != first.config["folds_sha256"]:
            raise RunError(
                f"cannot blend runs built on different folds: {first.label} ({first.path}) used "
                f"{first.config['folds_file']} (sha256 {first.config['folds_sha256'][:12]}), "
                f"{run.label} ({run.path}) used {run.config['folds_file']} (sha256 "
                f"{run.config['folds_sha256'][:12]}). Their out-of-fold predictions do not line up; "
                "blend only runs made with the same --folds and --seed on the same data.")
        if run.config["competition"] != first.config["competition"]:
            raise RunError(f"cannot blend runs of different competitions: {first.label} is "
                           f"{first.config['competition']}, {run.label} is {run.config['competition']}")
        theirs = run.oof.set_index("id")["fold"]
        ours = first.oof.set_index("id")["fold"]
        if set(theirs.index) != set(ours.index) or not theirs.loc[ours.index].equals(ours):
            raise RunError(f"{first.label} and {run.label} share a folds file but not the same out-of-fold "
                           "rows (was one run made with --drop-bad-rows?); they cannot be blended")


# ---------------------------------------------------------------------------------------------------
# Blending

@dataclass
class Blend:
    runs: list[Run]
    weighting: str                  # "auto" or "equal"
    tune_threshold: bool
    params: blending.BlendParams    # fitted on every OOF row: what the test predictions use
    cross_fit: blending.CrossFit    # each fold predicted by params fitted on the other folds
    oof: pd.DataFrame               # id, fold, gender, age + the cross-fitted blend's predictions
    cv: Scores                      # the honest (cross-fitted) out-of-fold score of the blend
    member_scores: list[Scores]
    submission: pd.DataFrame        # id, gender, age in sample_submission.csv order
    sample_path: Path

    @property
    def labels(self) -> list[str]:
        return [run.label for run in self.runs]

    def fitted(self) -> list[str]:
        """What was fitted on out-of-fold labels (and so cross-fitted for the CV score)."""
        return ((["gender weights", "age weights"] if self.weighting == "auto" else [])
                + (["gender threshold"] if self.tune_threshold else []) + ["age clip range"])


def blend(runs: list[Run], weights: str = "auto", *, tune_threshold: bool | None = None,
          sample_path=None) -> Blend:
    """Blend complete runs (see load_run). `weights`: "auto" (fitted) or "equal".

    The threshold is tuned by default with "auto" and fixed at 0.5 with "equal" (unless
    tune_threshold=True). Test predictions use parameters fitted on all OOF rows.
    """
    if not runs:
        raise RunError("no runs to blend")
    if tune_threshold is None:
        tune_threshold = weights == "auto"
    check_blendable(runs)
    first = runs[0].oof
    aligned = [run.oof.set_index("id").loc[first["id"]] for run in runs]
    data = blending.MemberPredictions(
        gender=first["gender"].to_numpy(int), age=first["age"].to_numpy(np.float64),
        fold=first["fold"].to_numpy(int),
        gender_prob=np.column_stack([a["gender_prob"].to_numpy(np.float64) for a in aligned]),
        age_pred=np.column_stack([a["age_pred"].to_numpy(np.float64) for a in aligned]))
    # blending.fit_blend is looked up here, not at import, so that tests can watch which rows each fit sees.
    fit = partial(blending.fit_blend, weighting=weights, tune_threshold=tune_threshold)
    crossed = blending.cross_fit(data, fit)
    params = fit(data)
    cv = score(data.gender, crossed.gender_pred, data.age, crossed.age_pred)
    oof = first[["id", "fold", "gender", "age"]].assign(
        gender_prob=crossed.gender_prob, gender_pred=crossed.gender_pred, age_pred=crossed.age_pred)

    sample_path = Path(sample_path or Path(runs[0].config["data_dir"]) / "sample_submission.csv")
    if not sample_path.is_file():
        raise RunError(f"{sample_path} not found (data_dir of {runs[0].label}); pass --sample PATH")
    sample = read_sample(sample_path)
    tests = []
    for run in runs:
        if set(run.test["id"]) != set(sample["id"]):
            raise RunError(f"{run.label}: its test predictions are not for the ids of {sample_path}")
        tests.append(run.test.set_index("id").loc[sample["id"]])
    _, gender, age = blending.apply_blend(
        params, np.column_stack([t["gender_prob"].to_numpy() for t in tests]),
        np.column_stack([t["age_pred"].to_numpy() for t in tests]))
    submission = pd.DataFrame({"id": sample["id"].to_numpy(), "gender": gender.astype(int), "age": age})
    return Blend(runs, weights, tune_threshold, params, crossed, oof, cv,
                 [run.oof_scores() for run in runs], submission, sample_path.resolve())


def default_output(runs: list[Run], weights: str) -> Path:
    """submissions/<model>-<name>+<model>-<name>[-equal].csv, readable and filesystem-safe."""
    stem = "+".join(re.sub(r"[^A-Za-z0-9._-]+", "_", f"{r.config['model']}-{r.config['name']}") for r in runs)
    if len(stem) > 150:
        stem = f"{stem[:120]}+{len(runs)}runs"
    return DEFAULT_SUBMISSIONS / f"{stem}{'-equal' if weights == 'equal' else ''}.csv"


def sidecar_path(out) -> Path:
    return Path(out).with_suffix(".json")


def write_submission(result: Blend, out, *, overwrite: bool = False) -> dict:
    """Validate and atomically write the CSV and its sidecar NAME.json; return the sidecar's content.

    The sidecar is written before the CSV is renamed into place, so a CSV never lacks one.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    sample = read_sample(result.sample_path)
    validate_submission(result.submission, sample, name=str(out))
    labels = result.labels
    with atomic_path(out) as tmp:
        result.submission.to_csv(tmp, index=False, float_format="%.4f")
        validate_submission_file(tmp, result.sample_path)  # the text as written, e.g. no "1.0"
        config = result.runs[0].config
        sidecar = {
            "csv": str(out), "sha256": sha256_file(tmp), "rows": len(result.submission),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "competition": config["competition"], "sample_submission": str(result.sample_path),
            "folds_file": config["folds_file"], "folds_sha256": config["folds_sha256"],
            "n_folds": int(config["n_folds"]),
            "members": [{"run": str(run.path.resolve()), "model": run.config["model"], "name": run.config["name"],
                         "oof": s.as_dict()} for run, s in zip(result.runs, result.member_scores)],
            "weighting": result.weighting,
            "weights": {"gender": dict(zip(labels, map(float, result.params.gender_weights))),
                        "age": dict(zip(labels, map(float, result.params.age_weights)))},
            "threshold": result.params.threshold,
            "age_range": [result.params.age_min, result.params.age_max],
            "cv_score": result.cv.score, "cv": result.cv.as_dict(),
            "cross_fitted": True, "fitted_on_oof": result.fitted(), "cv_note": cv_note(result),
            "fold_params": {str(f): p.as_dict(labels) for f, p in result.cross_fit.fold_params.items()},
        }
        write_json(sidecar_path(out), sidecar)
    return sidecar


def cv_note(result: Blend) -> str:
    k = len(result.cross_fit.fold_params)
    fitted = result.fitted()
    listed = ", ".join(fitted[:-1]) + (" and " if len(fitted) > 1 else "") + fitted[-1]
    return (f"cross-fitted: for each fold, the {listed} were fitted on the other {k - 1} folds and scored "
            f"on that fold's rows only; the submission uses them fitted on all {k} folds")


def table(result: Blend) -> str:
    """Members' and the blend's OOF scores with the weights."""
    width = max(24, *(len(label) for label in result.labels))
    lines = [f"{'':{width}}  {'w gender':>8}  {'w age':>6}  {'score':>6}  {'gender F1':>9}  {'age RMSE':>8}"]
    for label, s, wg, wa in zip(result.labels, result.member_scores,
                                result.params.gender_weights, result.params.age_weights):
        lines.append(f"{label:{width}}  {wg:8.3f}  {wa:6.3f}  {s.score:6.4f}  {s.gender_f1:9.4f}  {s.age_rmse:8.3f}")
    lines.append(f"{'blend (cross-fitted CV)':{width}}  {'':8}  {'':6}  {result.cv.score:6.4f}  "
                 f"{result.cv.gender_f1:9.4f}  {result.cv.age_rmse:8.3f}")
    best = max(s.score for s in result.member_scores)
    lines.append(f"members: threshold 0.5, raw ages. blend: threshold {result.params.threshold:.2f}, ages clipped "
                 f"to [{result.params.age_min:g}, {result.params.age_max:g}]; {result.cv.score - best:+.4f} "
                 "vs the best member")
    lines.append(cv_note(result))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directory or MODEL/NAME (runs/MODEL/NAME)")
    parser.add_argument("--out", help="submission CSV (default submissions/<members>.csv); NAME.json beside it")
    parser.add_argument("--weights", choices=("auto", "equal"), default="auto",
                        help="auto: fitted on out-of-fold predictions (cross-fitted CV); equal: plain mean")
    parser.add_argument("--tune-threshold", action=argparse.BooleanOptionalAction, default=None,
                        help="tune the gender threshold for macro-F1 (default: on with auto, off with equal)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing submission")
    parser.add_argument("--runs-root", default=str(DEFAULT_RUNS_ROOT), help="where MODEL/NAME runs live")
    parser.add_argument("--sample", help="sample_submission.csv (default: the first run's data_dir)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(spec, args.runs_root) for spec in args.runs]
        check_blendable(runs)
        out = Path(args.out) if args.out else default_output(runs, args.weights)
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        result = blend(runs, args.weights, tune_threshold=args.tune_threshold, sample_path=args.sample)
        print(table(result))
        sidecar = write_submission(result, out, overwrite=args.overwrite)
    except (RunError, SubmissionError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({sidecar['rows']} rows, sha256 {sidecar['sha256'][:12]}) and {sidecar_path(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
