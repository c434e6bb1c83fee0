"""A run directory: runs/<model>/<name>/ and what it holds.

    config.json          what the run computes (TrainConfig) and on what: competition, data, folds file
    fold<k>/             best.pt, last.pt, history.csv, oof.csv, metrics.json (the fold is done)
    test_fold<k>.csv     fold k's model's test predictions
    oof.csv, metrics.json, report.png   once every fold is done

A directory made with another configuration, or on other data or folds, is never reused without
--overwrite: its folds would not mean what the new command asks for.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.config import TrainConfig
from kit.data import Competition
from kit.errors import RunError
from kit.estimate import Estimate, folded, leaderboard_estimate
from kit.files import exclusive_lock, read_json, remove_stale_temporaries, write_csv, write_json
from kit.log import log
from kit.metric import Scores, score_probabilities
from kit.paths import Project
from kit.selection import Selection, measure_selection

OOF_COLUMNS = ["id", "fold", "gender", "age", "gender_prob", "age_pred"]
TEST_COLUMNS = ["id", "gender_prob", "age_pred"]
CONFIG_KEYS = ["model", "name", "competition", "data_dir", "folds_file", "folds_sha256", "n_folds"]


def fold_done_file(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold{fold}" / "metrics.json"


def fold_lock(run_dir: Path, fold: int):
    """Held while a process trains the fold (kit.files.exclusive_lock: it dies with the process)."""
    return exclusive_lock(run_dir / f"fold{fold}" / ".training.lock", wait=False)


def write_fold(run_dir: Path, result) -> None:
    """A finished fold's files; metrics.json last, since it says the fold is done."""
    fold_dir = run_dir / f"fold{result.fold}"
    write_csv(fold_dir / "oof.csv", result.oof)
    write_csv(run_dir / f"test_fold{result.fold}.csv", result.test)
    write_json(fold_done_file(run_dir, result.fold), {"fold": result.fold, "best_epoch": result.best_epoch,
                                                      "scores": result.scores.as_dict(),
                                                      "cut_at_epoch": result.cut_at_epoch,
                                                      "planned_epochs": result.planned_epochs,
                                                      "epochs_trained": result.epochs_trained,
                                                      "setup_seconds": result.setup_seconds})


def epochs_trained(run_dir: Path, fold: int, epochs: int) -> float:
    """The epochs a finished fold trained: --epochs, unless a time limit planned fewer or cut it short (parts
    of an epoch count as such; folds finished before they were recorded count whole epochs)."""
    record = read_json(fold_done_file(run_dir, fold))
    if record.get("epochs_trained") is not None:
        return record["epochs_trained"]
    planned = record.get("planned_epochs") or epochs
    return min(planned, record.get("cut_at_epoch") or planned)


def setup_seconds(run_dir: Path, fold: int) -> float | None:
    """What a finished fold spent before its first epoch (a frozen trunk's features); None if not recorded."""
    return read_json(fold_done_file(run_dir, fold)).get("setup_seconds")


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, record: dict) -> None:
    """Create the run directory, or check that an existing one was made with this configuration.

    One process at a time: identical commands started together would otherwise see each other's half-made
    directory (created, config.json not yet renamed into it) and take it for a foreign one. The lock lives
    beside the directory, not in it, so that it never makes an empty directory look used."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run_dir.parent / f".{run_dir.name}.lock"):
        _prepare_run_dir(run_dir, cfg, record)


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, record: dict) -> None:
    config_path = run_dir / "config.json"
    if config_path.is_file():
        saved = read_json(config_path)
        saved_cfg = TrainConfig.from_dict(saved["train"], source=str(config_path))
        differences = {k: (v, cfg.result_fields().get(k)) for k, v in saved_cfg.result_fields().items()
                       if cfg.result_fields().get(k) != v}
        if saved.get("folds_sha256") != record["folds_sha256"]:
            differences["folds file"] = (saved.get("folds_file"), record["folds_file"])
        if saved.get("data_fingerprint") != record["data_fingerprint"]:
            differences["data (ids, labels or images)"] = (saved.get("data_fingerprint"), record["data_fingerprint"])
        if differences and not cfg.overwrite:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differences.items())
            raise RunError(f"{run_dir} holds a run with another configuration or other data ({listed}). It is "
                           "kept; choose another --name, or pass --overwrite to replace it.")
        if not differences:
            remove_stale_temporaries(run_dir, recursive=True)   # left by a process killed mid-write
            return
        if run_dir.is_symlink():   # rmtree refuses links; deleting what it points to is not asked for
            raise RunError(f"{run_dir} is a symbolic link (to {os.readlink(run_dir)}) holding a run with another "
                           "configuration or other data; --overwrite does not delete through a link: remove the "
                           "link (or the run it points to) yourself, or choose another --name")
        log(f"--overwrite: removing {run_dir} (made with another configuration or other data)")
        shutil.rmtree(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists without a config.json; choose another --name or move it away")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, {**record, "train": cfg.to_dict()})


def fold_test_predictions(run_dir: Path, n_folds: int) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(ids, gender_prob, age_pred), the last two (K, test rows): every fold model's test predictions."""
    frames = [read_predictions(run_dir / f"test_fold{k}.csv", TEST_COLUMNS, probability="gender_prob")
              for k in range(n_folds)]
    for k, frame in enumerate(frames[1:], start=1):
        if not frame["id"].equals(frames[0]["id"]):
            raise RunError(f"{run_dir}: test_fold{k}.csv does not list the ids of test_fold0.csv in the same order")
    return (frames[0]["id"], np.stack([f["gender_prob"].to_numpy(np.float64) for f in frames]),
            np.stack([f["age_pred"].to_numpy(np.float64) for f in frames]))


def run_selection(run_dir: Path, n_folds: int) -> Selection:
    """The run's best-epoch selection from its folds' history.csv (none measured where one is missing, as in a
    run downloaded without its fold folders)."""
    paths = [run_dir / f"fold{k}" / "history.csv" for k in range(n_folds)]
    if not all(p.is_file() for p in paths):
        return Selection([])
    return measure_selection([pd.read_csv(p) for p in paths])


def read_fold_scores(run_dir: Path, fold: int) -> Scores:
    path = fold_done_file(run_dir, fold)
    try:
        return Scores(**read_json(path)["scores"])
    except (KeyError, TypeError):
        raise RunError(f"{path} is damaged (no fold scores in it); delete it and the fold is finished again from "
                       "its checkpoints") from None


def finish_run(run_dir: Path, cfg: TrainConfig, comp: Competition) -> tuple[Scores, Selection, Estimate]:
    """Write oof.csv, metrics.json and report.png from the folds' outputs; return the out-of-fold scores, the
    best-epoch selection and the leaderboard estimate of the folds' averaged test predictions."""
    oof = pd.concat([pd.read_csv(run_dir / f"fold{f}" / "oof.csv", dtype={"id": str}) for f in range(cfg.folds)])
    order = {i: n for n, i in enumerate(comp.train["id"])}
    oof = oof.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)
    write_csv(run_dir / "oof.csv", oof)
    overall = score_probabilities(oof["gender"], oof["gender_prob"], oof["age"], oof["age_pred"])
    folds = {str(f): read_json(fold_done_file(run_dir, f)) for f in range(cfg.folds)}
    histories = [pd.read_csv(run_dir / f"fold{f}" / "history.csv") for f in range(cfg.folds)]
    throughput = pd.concat(histories)["train_images_per_s"]
    selection = measure_selection(histories)
    _, fold_prob, fold_age = fold_test_predictions(run_dir, cfg.folds)
    estimate = leaderboard_estimate(oof=folded(oof), scores=overall, test_prob=fold_prob, test_age=fold_age,
                                    selection_bias=selection.bias)
    write_json(run_dir / "metrics.json", {"overall": overall.as_dict(), "selection": selection.as_dict(overall.score),
                                          "leaderboard_estimate": estimate.as_dict(), "folds": folds,
                                          "train_images_per_s": float(throughput.median())})
    from kit.report import make_report

    make_report(run_dir / "report.png", oof, histories, title=f"{cfg.model} / {cfg.name}: {overall}")
    return overall, selection, estimate


# ----------------------------------------------------------------------------- reading a finished run

@dataclass
class Run:
    """One finished cross-validation run: its out-of-fold predictions and fold-averaged test predictions."""
    path: Path
    config: dict
    oof: pd.DataFrame      # OOF_COLUMNS, one row per training image
    test: pd.DataFrame     # id, gender_prob, age_pred: the mean over the K fold models, test.csv order
    fold_gender_prob: np.ndarray   # (K, test rows): each fold model's, in test's row order
    fold_age_pred: np.ndarray
    selection: Selection   # best-epoch selection measured from the folds' history.csv

    @property
    def label(self) -> str:
        return f"{self.config['model']}/{self.config['name']}"

    def oof_scores(self) -> Scores:
        """The run's own OOF score as the harness reports it: threshold 0.5, ages unclipped."""
        return score_probabilities(self.oof["gender"], self.oof["gender_prob"], self.oof["age"], self.oof["age_pred"])


def resolve_run(spec, runs_root: Path) -> Path:
    """A run directory given as a path, or as MODEL/NAME under `runs_root`."""
    for candidate in (Path(spec), Path(runs_root) / spec):
        if (candidate / "config.json").is_file():
            return candidate
    raise RunError(f"run {spec!r} not found: neither {Path(spec)} nor {Path(runs_root) / spec} "
                   "is a run directory with a config.json")


def load_run(spec, runs_root: Path | None = None) -> Run:
    """Load and check a complete run (a path, or MODEL/NAME under runs_root, default the project's runs/);
    RunError says what is missing or wrong."""
    path = resolve_run(spec, runs_root if runs_root is not None else Project.at().runs)
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
                       + f". Rerun `facekit cv {config['model']} --name {config['name']} ...` with the "
                         "run's options to resume it; finished folds are kept.")
    oof = read_predictions(path / "oof.csv", OOF_COLUMNS, probability="gender_prob")
    problems = []
    if oof["id"].duplicated().any():
        problems.append("duplicated ids")
    if not oof["fold"].isin(range(n_folds)).all() or oof["fold"].nunique() != n_folds:
        problems.append(f"fold column does not hold each of 0..{n_folds - 1}")
    if not oof["gender"].isin([0, 1]).all():
        problems.append("true gender not 0/1")
    if problems:
        raise RunError(f"{path / 'oof.csv'}: {'; '.join(problems)}")
    ids, fold_prob, fold_age = fold_test_predictions(path, n_folds)
    # Within a run, the K fold models' test predictions are simply averaged.
    test = pd.DataFrame({"id": ids.to_numpy(), "gender_prob": fold_prob.mean(axis=0),
                         "age_pred": fold_age.mean(axis=0)})
    oof[["fold", "gender"]] = oof[["fold", "gender"]].astype(int)
    return Run(path=path, config=config, oof=oof, test=test, fold_gender_prob=fold_prob, fold_age_pred=fold_age,
               selection=run_selection(path, n_folds))


def read_predictions(path: Path, columns: list[str], probability: str) -> pd.DataFrame:
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
    """Runs are blendable only on the same folds file (by sha256), the same rows and the same competition,
    each once: a run given twice (as a path and as MODEL/NAME, say) would only count double."""
    seen: dict[Path, Run] = {}
    for run in runs:
        where = run.path.resolve()
        if where in seen:
            raise RunError(f"{run.path} is given twice (also as {seen[where].path}); each run can join a blend once")
        seen[where] = run
    first = runs[0]
    for run in runs[1:]:
        if run.config["folds_sha256"] != first.config["folds_sha256"]:
            raise RunError(
                f"cannot blend runs built on different folds: {first.label} ({first.path}) used "
                f"{first.config['folds_file']} (sha256 {first.config['folds_sha256'][:12]}), "
                f"{run.label} ({run.path}) used {run.config['folds_file']} (sha256 "
                f"{run.config['folds_sha256'][:12]}). Their out-of-fold predictions do not line up; "
                "blend only runs made with the same --folds and --fold-seed on the same data.")
        if run.config["competition"] != first.config["competition"]:
            raise RunError(f"cannot blend runs of different competitions: {first.label} is "
                           f"{first.config['competition']}, {run.label} is {run.config['competition']}")
        theirs = run.oof.set_index("id")["fold"]
        ours = first.oof.set_index("id")["fold"]
        if set(theirs.index) != set(ours.index) or not theirs.loc[ours.index].equals(ours):
            raise RunError(f"{first.label} and {run.label} share a folds file but not the same out-of-fold "
                           "rows (was one run made with --drop-bad-rows?); they cannot be blended")
