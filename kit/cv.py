"""K-fold cross-validation: the command that turns competition files into an honest score.

    ./run.sh cv resnet18 --data ../shared/data/utkface-age-gender.zip --no-pretrained --epochs 12

writes runs/<model>/<name>/: config.json, fold<k>/ (best.pt, last.pt, history.csv, oof.csv,
metrics.json), test_fold<k>.csv, and once every fold is done oof.csv, metrics.json and report.png.
Rerunning the same command skips finished folds and continues an interrupted one from its last
epoch. A run directory made with another configuration is never overwritten without --overwrite.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from kit.age import head_outputs
from kit.config import UserError, TrainConfig, add_train_arguments, check_config, config_from_args, parse_duration, parse_fold_list
from kit.data import Competition, load_competition, locate
from kit.files import read_json, sha256_file, write_csv, write_json
from kit.folds import folds_for
from kit.metric import Scores, score_probabilities
from kit.models import create_model


class RunError(UserError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    scores: Scores | None          # over all out-of-fold rows, once every fold is done
    fold_scores: dict[int, Scores]
    seconds: float
    complete: bool


def project_root() -> Path:
    return Path(os.environ.get("FACEKIT_ROOT", Path.cwd()))


def check_weights(cfg: TrainConfig) -> None:
    """Fail before any long work if the starting weights cannot be had (offline, bad file)."""
    if cfg.weights or cfg.pretrained:
        create_model(cfg.model, pretrained=bool(cfg.pretrained), weights=cfg.weights, stem=cfg.stem,
                     age_outputs=head_outputs(cfg.age_target))


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, record: dict) -> None:
    """Create the run directory, or check that an existing one was made with this configuration."""
    config_path = run_dir / "config.json"
    if config_path.is_file():
        saved = read_json(config_path)
        saved_cfg = TrainConfig.from_dict(saved["train"])
        differences = {k: (v, cfg.result_fields().get(k)) for k, v in saved_cfg.result_fields().items()
                       if cfg.result_fields().get(k) != v}
        if saved.get("folds_sha256") != record["folds_sha256"]:
            differences["folds file"] = (saved.get("folds_file"), record["folds_file"])
        if differences and not cfg.overwrite:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differences.items())
            raise RunError(f"{run_dir} holds a run with another configuration ({listed}). It is kept; "
                           "choose another --name, or pass --overwrite to replace it.")
        if differences:
            print(f"--overwrite: removing {run_dir} (made with another configuration)", flush=True)
            shutil.rmtree(run_dir)
        else:
            return
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists without a config.json; choose another --name or move it away")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, {**record, "train": cfg.to_dict()})


def run_cv(cfg: TrainConfig, *, root: Path | None = None, run_dir: Path | None = None,
           on_epoch: Callable[[int, int, Scores], None] | None = None,
           on_fold: Callable[[int, Scores], None] | None = None,
           log=print) -> RunResult:
    """Cross-validate `cfg.model`; returns the overall and per-fold out-of-fold scores.

    The run lives in `run_dir` (default runs/<model>/<name>). `on_epoch(fold, epoch, scores)` and
    `on_fold(fold, scores)` are called as training goes (the tuner reports and prunes there).
    """
    started = time.monotonic()
    root = Path(root or project_root())
    check_config(cfg)
    # Cheap checks first: data location, configuration, weights, run directory. Then decoding.
    folder, competition_name, is_sample = locate(cfg.data, project_root=root)
    cfg = cfg.resolved(sample=is_sample)
    if is_sample:
        log(f"data: SYNTHETIC sample competition in {folder} (pass --data for real data)")
    check_weights(cfg)
    cfg.name = cfg.name or competition_name
    run_dir = Path(run_dir or root / "runs" / cfg.model / cfg.name)

    comp, train_images, test_images = load_competition(cfg.data, project_root=root, size=cfg.size,
                                                       drop_bad_rows=cfg.drop_bad_rows)
    fold_of, fold_file = folds_for(comp.train, competition=comp.name, k=cfg.folds, seed=cfg.seed,
                                   folds_dir=root / "folds")
    record = {"model": cfg.model, "name": cfg.name, "competition": comp.name, "data_dir": str(comp.root.resolve()),
              "is_sample": comp.is_sample, "folds_file": str(fold_file), "folds_sha256": sha256_file(fold_file),
              "n_folds": cfg.folds, "train_rows": len(comp.train), "test_rows": len(comp.test)}
    prepare_run_dir(run_dir, cfg, record)
    log(f"run {run_dir}: {cfg.model}, {cfg.folds} folds, {cfg.epochs} epochs at {cfg.size}px, "
        f"{len(comp.train)} train / {len(comp.test)} test images")

    from kit.train import FoldData, fit_fold  # imports torch: after the cheap checks

    deadline = started + cfg.time_limit if cfg.time_limit else None
    wanted = cfg.only_folds if cfg.only_folds is not None else list(range(cfg.folds))
    fold_scores: dict[int, Scores] = {}
    for fold in wanted:
        fold_dir = run_dir / f"fold{fold}"
        done = fold_dir / "metrics.json"
        if done.is_file():
            fold_scores[fold] = Scores(**read_json(done)["scores"])
            log(f"fold {fold}: done earlier ({fold_scores[fold]})")
            continue
        held_out = (fold_of == fold).to_numpy()
        data = FoldData(train=comp.train[~held_out], valid=comp.train[held_out], test=comp.test,
                        train_images=train_images, test_images=test_images)
        fold_deadline = None
        if deadline is not None:  # share what is left equally among the folds still to run
            remaining = [f for f in wanted if f >= fold and not (run_dir / f"fold{f}" / "metrics.json").is_file()]
            fold_deadline = time.monotonic() + (deadline - time.monotonic()) / len(remaining)
        result = fit_fold(cfg, fold=fold, data=data, fold_dir=fold_dir, on_epoch=on_epoch,
                          deadline=fold_deadline, log=log)
        write_csv(fold_dir / "oof.csv", result.oof)
        write_csv(run_dir / f"test_fold{fold}.csv", result.test)
        write_json(done, {"fold": fold, "best_epoch": result.best_epoch, "scores": result.scores.as_dict(),
                          "cut_at_epoch": result.cut_at_epoch})
        fold_scores[fold] = result.scores
        log(f"fold {fold} done: best epoch {result.best_epoch}  {result.scores}")
        if on_fold is not None:
            on_fold(fold, result.scores)

    complete = all((run_dir / f"fold{f}" / "metrics.json").is_file() for f in range(cfg.folds))
    overall = finish_run(run_dir, cfg, comp) if complete else None
    seconds = time.monotonic() - started
    if overall is not None:
        log(f"out-of-fold over {cfg.folds} folds: {overall}  ({seconds / 60:.1f} min)")
    else:
        log(f"folds done: {sorted(fold_scores)}; the run is complete once every fold has run")
    return RunResult(run_dir, overall, fold_scores, seconds, complete)


def finish_run(run_dir: Path, cfg: TrainConfig, comp: Competition) -> Scores:
    """Write oof.csv, metrics.json and report.png from the folds' outputs."""
    oof = pd.concat([pd.read_csv(run_dir / f"fold{f}" / "oof.csv", dtype={"id": str}) for f in range(cfg.folds)])
    order = {i: n for n, i in enumerate(comp.train["id"])}
    oof = oof.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)
    write_csv(run_dir / "oof.csv", oof)
    overall = score_probabilities(oof["gender"], oof["gender_prob"], oof["age"], oof["age_pred"])
    folds = {str(f): read_json(run_dir / f"fold{f}" / "metrics.json") for f in range(cfg.folds)}
    histories = [pd.read_csv(run_dir / f"fold{f}" / "history.csv") for f in range(cfg.folds)]
    throughput = pd.concat(histories)["train_images_per_s"]
    write_json(run_dir / "metrics.json", {"overall": overall.as_dict(), "folds": folds,
                                          "train_images_per_s": float(throughput.median())})
    from kit.report import make_report

    make_report(run_dir / "report.png", oof, histories, title=f"{cfg.model} / {cfg.name}: {overall}")
    return overall


# ----------------------------------------------------------------------------- command line

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m kit cv", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registered model name: scratch or resnet18")
    parser.add_argument("--name", help="run directory name under runs/<model>/ (default: the competition)")
    parser.add_argument("--only-folds", type=parse_fold_list, help="comma-separated folds to run, e.g. 0,2")
    parser.add_argument("--time-limit", type=parse_duration, help="wall-time budget for the run, e.g. 45m")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="replace a run directory made with another configuration")
    add_train_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        result = run_cv(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if result.fold_scores else 1


if __name__ == "__main__":
    raise SystemExit(main())
