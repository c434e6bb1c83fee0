"""The leaderboard estimate checked inside the training data (issue 23's acceptance).

    .venv/bin/python scripts/holdout_check.py --data ../shared/data/utkface-age-gender.zip \
        --root /work/t23-holdout --folds 3            # build, train (resumable), report
    ... --folds 2 --members dlib_age=3,dlib_face=3 --num-threads 1   # what a shared 2-core CPU affords
    ... --members dlib_age=3,dlib_face=3 --skip-training             # the report alone, on finished runs

A stratified quarter of train.csv becomes a pseudo test set whose labels the kit never sees: the script
writes a competition folder (train.csv: the other three quarters; test.csv and sample_submission.csv: the
held-out quarter; the images linked, not copied), cross-validates each member on it with its `best` recipe
(kit/best/members.py), blends them as `ensemble` does, and for each run and the blend prints the out-of-fold
score, the leaderboard estimate (kit/estimate.py) and what the submitted predictions really score on the
held-out quarter. Everything lives under --root (its own runs/, folds/ and .cache/), never in the project.
Rerunning resumes: the folder is rebuilt only if missing, finished folds are kept.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.best.members import member_config  # noqa: E402  (the kit is imported from this checkout)
from kit.config import TrainConfig  # noqa: E402
from kit.data import extract_zip, find_competition_folder  # noqa: E402
from kit.files import write_csv  # noqa: E402
from kit.folds import make_folds  # noqa: E402
from kit.log import log  # noqa: E402
from kit.metric import score, score_probabilities  # noqa: E402

HOLDOUT_FILE = "holdout_labels.csv"   # beside the competition folder: the held-out quarter's labels
# Each member with the epochs its recipe is measured at (kit/best/members.py, README "Models").
MEMBERS = {"dlib_age": 6, "dlib_face": 7}
TOLERANCE = 0.004   # issue 23's acceptance: |hold-out - estimate| at most this, and below |hold-out - OOF|


def source_folder(data: str, root: Path) -> Path:
    """The real competition's folder (train.csv, train/ images), extracting a zip once under root/.cache."""
    path = Path(data)
    if path.is_file():
        path = extract_zip(path, root / ".cache" / "extracted")
    return find_competition_folder(path)


def build_holdout(*, source: Path, target: Path, seed: int, quarters: int = 4) -> Path:
    """The competition folder whose test set is one stratified 1/`quarters` of `source`'s train.csv.

    The split reuses the kit's fold stratification (gender x age bins), so the held-out part has the
    training data's label mix; the images are linked, so their paths in the CSVs stay as they were."""
    labels_path = target.parent / f"{target.name}-{HOLDOUT_FILE}"
    if (target / "train.csv").is_file() and labels_path.is_file():
        return target
    train = pd.read_csv(source / "train.csv", dtype={"id": str})
    part = make_folds(train, k=quarters, seed=seed)["fold"].to_numpy()
    held = train[part == 0]
    target.mkdir(parents=True, exist_ok=True)
    for folder in {Path(p).parts[0] for p in train["full_path"]}:
        link = target / folder
        if not link.exists():
            os.symlink((source / folder).resolve(), link)
    write_csv(target / "train.csv", train[part != 0])
    write_csv(target / "test.csv", held[["id", "full_path"]])
    write_csv(target / "sample_submission.csv", held[["id"]].assign(gender=0, age=0))
    write_csv(labels_path, held[["id", "gender", "age"]])
    log(f"wrote {target}: {int((part != 0).sum())} train rows, {len(held)} held-out rows ({labels_path.name})")
    return target


def train_members(*, folder: Path, root: Path, folds: int, epochs: dict[str, int], name: str,
                  num_threads: int | None) -> dict[str, Path]:
    """Cross-validate each member with its recipe on `folder`; returns each member's run directory."""
    from kit.cv import run_cv

    runs = {}
    for model, n_epochs in epochs.items():
        base = TrainConfig(model=model, data=str(folder), folds=folds, epochs=n_epochs, name=name,
                           num_threads=num_threads)
        cfg = member_config(base, model, {}, given={"epochs"}, name=name, sample=False)
        runs[model] = run_cv(cfg, root=root).run_dir
    return runs


def holdout_row(label: str, result, truth: pd.DataFrame) -> dict:
    """One line of the check: a submission (kit.ensemble.Blend) scored on the held-out quarter beside its
    out-of-fold score and its leaderboard estimate; also its fold models' mean score there one by one."""
    truth = truth.set_index("id").loc[result.submission["id"]]
    held = score(truth["gender"], result.submission["gender"], truth["age"], result.submission["age"])
    estimate = result.estimate
    return {"submission": label, "holdout": held.score, "oof": result.cv.score, "estimate": estimate.score,
            "|holdout-estimate|": abs(held.score - estimate.score), "|holdout-oof|": abs(held.score - result.cv.score),
            "public 95%": "{:.4f}-{:.4f}".format(*estimate.public), "f1 gain": estimate.gain_f1,
            "age var": estimate.age_variance, "holdout F1": held.gender_f1, "holdout RMSE": held.age_rmse,
            "estimate F1": estimate.gender_f1, "estimate RMSE": estimate.age_rmse,
            "oof F1": result.cv.gender_f1, "oof RMSE": result.cv.age_rmse}


def single_models(run, truth: pd.DataFrame) -> list[float]:
    """Each fold model's own score on the held-out quarter (what averaging improves on)."""
    truth = truth.set_index("id").loc[run.test["id"]]
    return [score_probabilities(truth["gender"], prob, truth["age"], age).score
            for prob, age in zip(run.fold_gender_prob, run.fold_age_pred)]


def report(*, runs: dict[str, Path], truth: pd.DataFrame) -> pd.DataFrame:
    """Each member submitted alone (`ensemble RUN`: equal weights) and their blend (`best`'s: fitted weights)."""
    from kit.ensemble import blend
    from kit.rundir import load_run

    loaded = {model: load_run(path) for model, path in runs.items()}
    rows = []
    for model, run in loaded.items():
        rows.append(holdout_row(model, blend([run], "equal"), truth))
        singles = single_models(run, truth)
        log(f"{model}: fold models one by one on the held-out quarter {min(singles):.4f}-{max(singles):.4f} "
            f"(mean {sum(singles) / len(singles):.4f}); {run.selection.describe(run.oof_scores().score)}")
        for fold in run.selection.folds:
            log(f"  fold {fold.fold}: best epoch {fold.best_epoch} ({fold.best_score:.4f}), last epoch "
                f"{fold.last_epoch} ({fold.last_score:.4f})")
    if len(loaded) > 1:
        rows.append(holdout_row(" + ".join(loaded), blend(list(loaded.values()), "auto"), truth))
    return pd.DataFrame(rows)


def parse_epochs(text: str | None) -> dict[str, int]:
    """'dlib_age=6,dlib_face=7' -> {'dlib_age': 6, 'dlib_face': 7}; None: MEMBERS."""
    if not text:
        return dict(MEMBERS)
    return {model: int(n) for model, n in (item.split("=") for item in text.split(","))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the real competition: its zip or folder")
    parser.add_argument("--root", required=True, type=Path, help="where runs/, folds/ and .cache/ go")
    parser.add_argument("--folds", type=int, default=3, help="folds of the cross-validation on the 3/4")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out quarter")
    parser.add_argument("--members", help="MODEL=EPOCHS,... (default: dlib_age=6,dlib_face=7)")
    parser.add_argument("--skip-training", action="store_true", help="report on the runs already there")
    parser.add_argument("--num-threads", type=int, help="torch's CPU threads (1 on a machine others share: two "
                                                         "threads wait on each other when the cores are busy)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    folder = build_holdout(source=source_folder(args.data, root), target=root / "data" / f"holdout-seed{args.seed}",
                           seed=args.seed)
    epochs = parse_epochs(args.members)
    name = f"holdout-seed{args.seed}-k{args.folds}"
    if args.skip_training:
        runs = {model: root / "runs" / model / name for model in epochs}
    else:
        runs = train_members(folder=folder, root=root, folds=args.folds, epochs=epochs, name=name,
                             num_threads=args.num_threads)
    truth = pd.read_csv(folder.parent / f"{folder.name}-{HOLDOUT_FILE}", dtype={"id": str})
    table = report(runs=runs, truth=truth)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        log(f"held-out quarter: {len(truth)} rows; {args.folds} folds on the other {len(folder_rows(folder))}; "
            f"epochs {epochs}\n{table.to_string(index=False)}")
    passed = (table["|holdout-estimate|"] <= TOLERANCE) & (table["|holdout-estimate|"] < table["|holdout-oof|"])
    log(f"acceptance (|holdout - estimate| <= {TOLERANCE} and < |holdout - oof|): "
        + ", ".join(f"{name} {'pass' if ok else 'FAIL'}" for name, ok in zip(table["submission"], passed)))
    return 0 if passed.all() else 1


def folder_rows(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "train.csv", usecols=["id"])


if __name__ == "__main__":
    from kit.__main__ import flush_denormals_before_threads, run

    flush_denormals_before_threads()   # as `cv` does: before torch starts its threads
    raise SystemExit(run(main))
