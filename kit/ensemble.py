"""Blending runs into a validated submission.

    facekit ensemble RUN [RUN ...] [--out submissions/NAME.csv] [--weights auto|equal]

RUN is a run directory or MODEL/NAME (runs/MODEL/NAME). Within a run the K fold models' test
predictions are averaged; across runs, members (only runs on the same folds file) are blended with
weights and a gender threshold fitted on the out-of-fold predictions (kit/blend.py). The blend's
cross-validated score is cross-fitted: each fold's rows are predicted by weights, threshold and age
range fitted on the other folds, so the score is not flattered by the fit.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

import kit.blend as blending
from kit.errors import RunError, SubmissionError
from kit.estimate import Estimate, folded, leaderboard_estimate
from kit.files import atomic_path, sha256_file, write_json
from kit.log import log
from kit.metric import Scores, score
from kit.paths import Project
from kit.rundir import Run, check_blendable, load_run
from kit.submission import publish_submission, read_sample, validate_submission, validate_submission_file

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
    estimate: Estimate              # what the submission should score (kit/estimate.py)

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

    # The first member whose data_dir is here (a run made on Kaggle names /kaggle/input/...).
    found = [Path(run.config["data_dir"]) / "sample_submission.csv" for run in runs]
    sample_path = Path(sample_path or next((p for p in found if p.is_file()), found[0]))
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
                 [run.oof_scores() for run in runs], submission, sample_path.resolve(),
                 blend_estimate(runs, params, oof=oof, cv=cv, ids=sample["id"]))


def blend_estimate(runs: list[Run], params: blending.BlendParams, *, oof: pd.DataFrame, cv: Scores,
                   ids: pd.Series) -> Estimate:
    """The leaderboard estimate of the blend: its fold-level test predictions (fold k's models of every member,
    blended with the submission's parameters) are what the submission averages, so their spread gives the
    averaging gain over the cross-fitted out-of-fold score. The blend's selection bias is its worst member's
    (a member's bias reaches the blend at most at full weight)."""
    rows = [pd.Index(run.test["id"]).get_indexer(ids) for run in runs]   # every member in `ids`' order

    def fold_blend(fold: int) -> tuple[np.ndarray, np.ndarray]:
        prob, _, age = blending.apply_blend(
            params, np.column_stack([r.fold_gender_prob[fold, at] for r, at in zip(runs, rows)]),
            np.column_stack([r.fold_age_pred[fold, at] for r, at in zip(runs, rows)]))
        return prob, age

    fold_prob, fold_age = zip(*(fold_blend(f) for f in range(runs[0].fold_gender_prob.shape[0])))
    return leaderboard_estimate(oof=folded(oof), scores=cv, test_prob=np.stack(fold_prob), test_age=np.stack(fold_age),
                                threshold=params.threshold, selection_bias=max(r.selection.bias for r in runs))


def default_output(runs: list[Run], weights: str, root: Path | None = None) -> Path:
    """submissions/<model>-<name>+<model>-<name>[-equal].csv, readable and filesystem-safe."""
    stem = "+".join(re.sub(r"[^A-Za-z0-9._-]+", "_", f"{r.config['model']}-{r.config['name']}") for r in runs)
    if len(stem) > 150:
        stem = f"{stem[:120]}+{len(runs)}runs"
    return Project.at(root).submissions / f"{stem}{'-equal' if weights == 'equal' else ''}.csv"


def sidecar_path(out) -> Path:
    return Path(out).with_suffix(".json")


def check_output(out: Path, *, overwrite: bool) -> None:
    """A submission is a .csv beside its NAME.json sidecar, never the ledger, and never replaces one
    without --overwrite."""
    if out.suffix != ".csv":
        raise SubmissionError(f"--out {out}: a submission is a .csv file (its sidecar {out.stem}.json is written "
                              "beside it)")
    if out.name == "ledger.csv":
        raise SubmissionError(f"--out {out}: ledger.csv is the submission ledger's name; choose another")
    for path in (out, sidecar_path(out)):
        if path.is_dir():   # --overwrite replaces a file, never a folder (nor would the rename manage)
            raise SubmissionError(f"--out {out}: {path} is a folder; name a file, e.g. {out.parent / 'blend.csv'}")
        if path.exists() and not overwrite:
            raise SubmissionError(f"{path} exists; pass --overwrite to replace it")


def write_submission(result: Blend, out, *, overwrite: bool = False) -> dict:
    """Validate and atomically write the CSV and its sidecar NAME.json; return the sidecar's content.

    The sidecar is written before the CSV is renamed into place, so a CSV never lacks one.
    """
    out = Path(out)
    check_output(out, overwrite=overwrite)
    sample = read_sample(result.sample_path)
    validate_submission(result.submission, sample, name=str(out))
    labels = result.labels
    with atomic_path(out) as tmp:
        result.submission.to_csv(tmp, index=False, float_format="%.4f")
        validate_submission_file(tmp, result.sample_path)  # the text as written, e.g. no "1.0"
        config = result.runs[0].config
        sidecar = {
            "csv": str(out), "sha256": sha256_file(tmp), "rows": len(result.submission),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
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
            "leaderboard_estimate": result.estimate.as_dict(),
            "selection": {run.label: run.selection.as_dict(s.score)
                          for run, s in zip(result.runs, result.member_scores)},
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
    for run, s in zip(result.runs, result.member_scores):
        if run.selection.folds:
            lines.append(f"{run.label}: {run.selection.describe(s.score)}")
    lines.append(str(result.estimate))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directory or MODEL/NAME (runs/MODEL/NAME)")
    parser.add_argument("--out", help="submission CSV (default: submissions/<members>.csv); NAME.json beside it")
    parser.add_argument("--weights", choices=("auto", "equal"), default="auto",
                        help="auto: fitted on out-of-fold predictions (cross-fitted CV); equal: plain mean "
                             "(default: %(default)s)")
    parser.add_argument("--tune-threshold", action=argparse.BooleanOptionalAction, default=None,
                        help="tune the gender threshold for macro-F1 (default: on with auto, off with equal)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing submission")
    parser.add_argument("--runs-root", help="where MODEL/NAME runs live (default: the project's runs/)")
    parser.add_argument("--sample", help="sample_submission.csv (default: the first run's data_dir)")
    args = parser.parse_args(argv)
    project = Project.at()
    runs = [load_run(spec, Path(args.runs_root) if args.runs_root else project.runs) for spec in args.runs]
    check_blendable(runs)
    out = Path(args.out) if args.out else default_output(runs, args.weights, project.root)
    check_output(out, overwrite=args.overwrite)
    result = blend(runs, args.weights, tune_threshold=args.tune_threshold, sample_path=args.sample)
    log(table(result))
    sidecar = write_submission(result, out, overwrite=args.overwrite)
    log(f"wrote {out} ({sidecar['rows']} rows, sha256 {sidecar['sha256'][:12]}) and {sidecar_path(out)}")
    publish_submission(out, result.sample_path)  # a Kaggle notebook: also /kaggle/working/submission.csv
    return 0
