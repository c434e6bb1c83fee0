"""K-fold cross-validation: the command that turns competition files into an honest score.

    ./run.sh cv resnet18 --data ../shared/data/utkface-age-gender.zip --no-pretrained --epochs 12

writes runs/<model>/<name>/ (kit/rundir.py): config.json, fold<k>/ (best.pt, last.pt, history.csv,
oof.csv, metrics.json), test_fold<k>.csv, and once every fold is done oof.csv, metrics.json and
report.png. Rerunning the same command skips finished folds and continues an interrupted one from its
last epoch. A run directory made with another configuration is never overwritten without --overwrite.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kit.age import head_outputs
from kit.config import TrainConfig
from kit.data import load_competition, locate
from kit.device import announce_device, check_device, default_devices, on_gpus
from kit.estimate import Estimate
from kit.files import sha256_file
from kit.folds import folds_for
from kit.log import log, tagged
from kit.metric import Scores
from kit.models import check_model_config, create_model, recipe_config
from kit.options import add_config_arguments, add_model_argument, config_from_args, given_fields, model_from_args
from kit.paths import Project
from kit.rundir import finish_run, fold_done_file, fold_lock, prepare_run_dir, read_fold_scores, write_fold
from kit.selection import Selection

if TYPE_CHECKING:
    from kit.parallel import FoldWorkers
    from kit.train import FoldPlan


@dataclass
class RunResult:
    run_dir: Path
    scores: Scores | None          # over all out-of-fold rows, once every fold is done
    fold_scores: dict[int, Scores]
    seconds: float
    complete: bool
    selection: Selection | None = None    # once every fold is done: best-epoch selection, measured
    estimate: Estimate | None = None      # and what the folds' averaged test predictions should score


def check_weights(cfg: TrainConfig) -> None:
    """Fail before any long work if the starting weights cannot be had (offline, bad file)."""
    if cfg.weights or cfg.pretrained:
        create_model(cfg.model, pretrained=bool(cfg.pretrained), weights=cfg.weights, stem=cfg.stem,
                     age_outputs=head_outputs(cfg.age_target))


@dataclass
class Prepared:
    """Everything a run's folds need, made once before the first fold."""
    cfg: TrainConfig               # resolved
    run_dir: Path
    comp: object                   # kit.data.Competition
    train_images: object
    test_images: object
    fold_of: object                # pd.Series: each training row's fold
    pseudo: dict                   # fold -> pseudo-labelled test images (kit/pseudo.py), or {}
    cache_dir: Path | None = None  # the project's .cache/ (a frozen trunk's features too large for memory)


def checked_config(cfg: TrainConfig, project: Project, *, lone_cpu_here: bool = True) -> TrainConfig:
    """The cheap checks, before anything is decoded: options, data location, weights, devices. `lone_cpu_here`:
    --devices cpu trains in this process (False: best's workers, kept for the command, have the member's frozen
    trunk already)."""
    check_model_config(cfg)
    folder, competition_name, is_sample = locate(cfg.data, project_root=project.root)
    cfg = cfg.resolved(sample=is_sample)
    check_model_config(cfg)
    if is_sample:
        log(f"data: SYNTHETIC sample competition in {folder} (pass --data for real data)")
    check_weights(cfg)
    for device in cfg.devices or [cfg.device]:
        check_device(device, cfg.precision, compile=cfg.compile)
    # No worker process needed; a lone GPU still gets one, so that this process makes no CUDA context beside it.
    if cfg.devices == ["cpu"] and lone_cpu_here:
        cfg = dataclasses.replace(cfg, device="cpu", devices=None)
    return dataclasses.replace(cfg, name=cfg.name or competition_name)


def prepare(cfg: TrainConfig, project: Project, run_dir: Path) -> Prepared:
    """Decode the data, read the folds (and the pseudo-labels), and create or check the run directory."""
    comp, train_images, test_images = load_competition(cfg.data, project_root=project.root, size=cfg.size,
                                                       drop_bad_rows=cfg.drop_bad_rows, folds=cfg.folds)
    fold_of, fold_file = folds_for(comp.train, competition=comp.name, k=cfg.folds, seed=cfg.fold_seed,
                                   folds_dir=project.folds)
    folds_sha256 = sha256_file(fold_file)
    pseudo, fingerprint = {}, comp.fingerprint
    if cfg.pseudo_labels:
        from kit.pseudo import pseudo_labels

        pseudo, pseudo_hash = pseudo_labels(cfg.pseudo_labels, project=project, test=comp.test,
                                            folds_sha256=folds_sha256, n_folds=cfg.folds)
        fingerprint = f"{fingerprint}+pseudo:{pseudo_hash}"   # other first-round predictions: another run
    record = {"model": cfg.model, "name": cfg.name, "competition": comp.name, "data_dir": str(comp.root.resolve()),
              "is_sample": comp.is_sample, "folds_file": str(fold_file), "folds_sha256": folds_sha256,
              "n_folds": cfg.folds, "train_rows": len(comp.train), "test_rows": len(comp.test),
              "data_fingerprint": fingerprint}
    prepare_run_dir(run_dir, cfg, record)
    log(f"run {run_dir}: {cfg.model}, {cfg.folds} folds, {cfg.epochs} epochs at {cfg.size}px, "
        f"{len(comp.train)} train / {len(comp.test)} test images")
    return Prepared(cfg, run_dir, comp, train_images, test_images, fold_of, pseudo, project.cache)


def run_on_devices(run: Prepared, project: Project, deadline: float | None, clock,
                   fold_plan: FoldPlan | None = None, fold_workers: FoldWorkers | None = None) -> None:
    """--devices (by default every GPU, a lone one too): one worker process per device trains the folds
    (kit/parallel.py; `fold_workers`: best's, kept for all its members), this one waits and makes no CUDA context."""
    from kit.parallel import train_in_workers

    cfg = run.cfg
    codes = train_in_workers(cfg, root=project.root, run_dir=run.run_dir,
                             time_limit=None if deadline is None else max(1.0, deadline - clock()),
                             fold_plan=None if fold_plan is None else dataclasses.asdict(fold_plan),
                             workers=fold_workers)
    failed = [i for i, code in enumerate(codes) if code]
    if not failed:
        return
    stopped = (f"worker(s) {failed} of --devices {','.join(cfg.devices)} stopped with exit code(s) "
               f"{[codes[i] for i in failed]} (see their lines above)")
    wanted = cfg.only_folds if cfg.only_folds is not None else range(cfg.folds)
    left = [fold for fold in wanted if not fold_done_file(run.run_dir, fold).is_file()]
    if left:   # run_cv's loop trains them here, each resuming from its last epoch
        log(f"{stopped}; this process trains the fold(s) they left: {left}")
    else:
        log(f"{stopped}, but the other workers finished every fold")


def train_fold(run: Prepared, fold: int, *, wanted: list[int], deadline: float | None, on_epoch, clock,
               fold_plan: FoldPlan | None = None, workers: int = 1):
    """Train one fold under its lock; None when another process holds it (or has just finished it).
    `workers`: the processes training the run's folds at once (--devices), each taking the next free one."""
    from kit.train import FoldData, FoldPlan, fit_fold  # imports torch's training code: after the cheap checks

    cfg, run_dir, comp = run.cfg, run.run_dir, run.comp
    with fold_lock(run_dir, fold) as mine:
        if not mine:   # another process (a second cv, a --devices worker) trains it: never both
            log(f"fold {fold}: another process is training it; skipped here")
            return None
        if fold_done_file(run_dir, fold).is_file():   # finished while this process looked elsewhere
            return None
        held_out = (run.fold_of == fold).to_numpy()
        data = FoldData(train=comp.train[~held_out], valid=comp.train[held_out], test=comp.test,
                        train_images=run.train_images, test_images=run.test_images, pseudo=run.pseudo.get(fold),
                        pseudo_weight=cfg.pseudo_weight, cache_dir=run.cache_dir)
        fold_deadline = None
        if deadline is not None:  # share what is left equally among the folds this process still runs: with
            # several workers taking folds in order, about 1 in `workers` of those not done from this one on
            remaining = [f for f in wanted if f >= fold and not fold_done_file(run_dir, f).is_file()]
            fold_deadline = clock() + (deadline - clock()) / math.ceil(len(remaining) / workers)
        result = fit_fold(cfg, fold=fold, data=data, fold_dir=run_dir / f"fold{fold}", on_epoch=on_epoch,
                          deadline=fold_deadline, plan=fold_plan or FoldPlan(), clock=clock)
        write_fold(run_dir, result)
    log(f"fold {fold} done: best epoch {result.best_epoch}  {result.scores}")
    return result.scores


def wait_for_fold(run_dir: Path, fold: int, *, deadline: float | None, clock, poll_s: float = 0.5) -> bool:
    """Wait while another process holds the fold's lock: True once nobody does, False if the deadline came."""
    while deadline is None or clock() < deadline:
        with fold_lock(run_dir, fold) as free:
            if free:
                return True
        time.sleep(poll_s)
    return False


def run_cv(cfg: TrainConfig, *, root: Path | None = None, run_dir: Path | None = None,
           on_epoch: Callable[[int, int, Scores], None] | None = None,
           on_fold: Callable[[int, Scores], None] | None = None,
           clock: Callable[[], float] = time.monotonic, wait_for_others: bool = True,
           fold_plan: FoldPlan | None = None, workers: int = 1, worker: int = 0,
           fold_workers: FoldWorkers | None = None) -> RunResult:
    """Cross-validate `cfg.model`; returns the overall and per-fold out-of-fold scores.

    `fold_plan` (kit.train.FoldPlan): the epochs the folds trained now run (at most cfg.epochs; best decides
    them fold by fold), and with --time-limit its estimates of an epoch and of inference, with which a fold
    that starts short of time runs its learning-rate schedule over the epochs that fit (kit/train.py fit_fold).

    The run lives in `run_dir` (default runs/<model>/<name>). `on_epoch(fold, epoch, scores)` and
    `on_fold(fold, scores)` are called as training goes (the tuner reports and prunes there). In a --devices
    worker, `workers` train the run's folds at once and this is number `worker`: it tries its own folds first
    (every `workers`-th from its number: with two workers, 0, 2, 4 and 1, 3), then any the others left free,
    and its time limit counts only its own share of the folds. `fold_workers` (kit.parallel.FoldWorkers): the
    --devices workers to send the folds to (best keeps them for all its members); None: started for this run.
    """
    started = clock()
    project = Project.at(root)
    cfg = checked_config(cfg, project, lone_cpu_here=fold_workers is None)
    run = prepare(cfg, project, Path(run_dir or project.run_dir(cfg.model, cfg.name)))
    deadline = started + cfg.time_limit if cfg.time_limit else None
    wanted = cfg.only_folds if cfg.only_folds is not None else list(range(cfg.folds))
    if cfg.devices and not all(fold_done_file(run.run_dir, fold).is_file() for fold in wanted):
        run_on_devices(run, project, deadline, clock, fold_plan, fold_workers)
    fold_scores: dict[int, Scores] = {}
    taken_elsewhere = []
    own = wanted[worker::workers]
    for fold in own + [f for f in wanted if f not in own]:
        if fold_done_file(run.run_dir, fold).is_file():
            fold_scores[fold] = read_fold_scores(run.run_dir, fold)
            log(f"fold {fold}: done earlier ({fold_scores[fold]})")
            continue
        scores = train_fold(run, fold, wanted=wanted, deadline=deadline, on_epoch=on_epoch, clock=clock,
                            fold_plan=fold_plan, workers=workers)
        if scores is None:
            if fold_done_file(run.run_dir, fold).is_file():
                fold_scores[fold] = read_fold_scores(run.run_dir, fold)
            else:
                taken_elsewhere.append(fold)
            continue
        fold_scores[fold] = scores
        if on_fold is not None:
            on_fold(fold, scores)
    # Identical commands started together share the folds; each then waits for the others' folds, so every
    # one of them ends with the whole run (and trains a fold itself if its holder died). --devices workers
    # do not wait: their parent does.
    for fold in taken_elsewhere if wait_for_others else []:
        log(f"fold {fold}: waiting for the process that trains it")
        if not wait_for_fold(run.run_dir, fold, deadline=deadline, clock=clock):
            break
        scores = train_fold(run, fold, wanted=wanted, deadline=deadline, on_epoch=on_epoch, clock=clock,
                            fold_plan=fold_plan)
        if fold_done_file(run.run_dir, fold).is_file():
            fold_scores[fold] = scores or read_fold_scores(run.run_dir, fold)

    complete = all(fold_done_file(run.run_dir, f).is_file() for f in range(cfg.folds))
    overall, selection, estimate = finish_run(run.run_dir, cfg, run.comp) if complete else (None, None, None)
    seconds = clock() - started
    if overall is not None:
        log(f"out-of-fold over {cfg.folds} folds: {overall}  ({seconds / 60:.1f} min)")
        log(f"  {selection.describe(overall.score)}")
        log(f"  {estimate}")
    else:
        log(f"folds done: {sorted(fold_scores)}; the run is complete once every fold has run")
    return RunResult(run.run_dir, overall, fold_scores, seconds, complete, selection, estimate)


def summary(result: RunResult, cfg: TrainConfig, project: Project) -> str:
    """What a finished command wrote and what to run next."""
    try:
        shown = result.run_dir.relative_to(project.root)
    except ValueError:
        shown = result.run_dir
    label = f"{shown.parent.name}/{shown.name}"
    if not result.complete:
        return (f"wrote {shown}/: fold(s) {sorted(result.fold_scores)}; run the same command without "
                "--only-folds (or with the others) to complete it")
    data = f" --data {cfg.data}" if cfg.data else ""
    steps = [(f"facekit ensemble {label}", "the submission CSV (and its NAME.json)"),
             (f"facekit cv dlib_age{data}", "a face-pretrained network, to blend with this run"),
             (f"facekit best --time-limit 60m{data}", "what an hour buys, blended")]
    width = max(len(command) for command, _ in steps)
    return "\n".join([
        f"wrote {shown}/: oof.csv (out-of-fold predictions), test_fold0..{cfg.folds - 1}.csv "
        "(each fold's test predictions), metrics.json, report.png",
        f"out-of-fold: {result.scores} (each fold's best epoch)",
        f"  {result.selection.describe(result.scores.score)}",
        f"  {result.estimate}",
        "next:", *(f"  {command:<{width}}   # {why}" for command, why in steps)])


def config_from_command(args: argparse.Namespace, project: Project) -> TrainConfig:
    """A command line's configuration: its model's card (input size, recipe, frozen trunk: what best's member of
    that model trains; on GPUs their batch and rates) under what the user gave (defaults < card < --params <
    options)."""
    cfg = config_from_args(args, model=model_from_args(args))
    _, _, is_sample = locate(cfg.data, project_root=project.root)
    return recipe_config(cfg, cfg.model, set(given_fields(args)), sample=is_sample,
                         on_gpu=on_gpus(cfg.device, cfg.devices))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit cv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser, positional=True)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    project = Project.at()
    cfg = config_from_command(args, project)
    cfg = dataclasses.replace(cfg, devices=default_devices(cfg.device, cfg.devices))   # on GPUs: a worker each
    announce_device(cfg.device, cfg.devices, cfg.precision, cfg.num_threads)
    result = run_cv(cfg, root=project.root)
    log(summary(result, cfg, project))
    return 0 if result.fold_scores else 1


def worker_job(spec: dict, job: dict, *, default_threads: int) -> None:
    """One job of a --devices worker: run_cv on its run directory with the job's configuration and share of
    the folds. Its time limit leaves out the time the job took to come (the worker's start, for the first)."""
    from kit.train import FoldPlan

    cfg = TrainConfig.from_dict(job["cfg"], source="the cv worker's job")
    if cfg.time_limit:   # the parent's limit ran on meanwhile; CLOCK_MONOTONIC: one clock for every process
        late = max(0.0, time.monotonic() - job["sent"])
        cfg = dataclasses.replace(cfg, time_limit=max(1.0, cfg.time_limit - late))
    # A lone worker's "its default" (None) is this process's own, whatever an earlier job of more workers set.
    cfg = dataclasses.replace(cfg, num_threads=cfg.num_threads or default_threads)
    fold_plan = FoldPlan(**job["fold_plan"]) if job.get("fold_plan") else None
    run_cv(cfg, root=Path(spec["root"]), run_dir=Path(job["run_dir"]), wait_for_others=False,
           fold_plan=fold_plan, workers=job["workers"], worker=job["worker"])


def worker_main(jobs=None, answers=None) -> int:
    """A --devices worker (kit/parallel.py starts it): its spec comes in the environment, its jobs as JSON lines
    on stdin (`jobs`), one answer line each on its answer pipe once done (`answers`); it ends with the stream.
    Its lines are tagged."""
    import json
    import os
    import sys

    import torch

    from kit.parallel import WORKER_ENV
    from kit.processes import die_with_parent, sigterm_raises_terminated

    spec = json.loads(os.environ[WORKER_ENV])
    die_with_parent(spec["parent"])   # a parent killed with -9 takes its workers along
    jobs = sys.stdin if jobs is None else jobs
    answers = os.fdopen(spec["answer_fd"], "w") if answers is None else answers
    default_threads = torch.get_num_threads()
    with tagged(f"worker {spec['index']} {spec['device']}"), sigterm_raises_terminated():
        for line in jobs:
            worker_job(spec, json.loads(line), default_threads=default_threads)
            answers.write("done\n")
            answers.flush()
    return 0


if __name__ == "__main__":
    import os

    from kit.commands import run_module
    from kit.parallel import WORKER_ENV

    # kit/parallel.py starts its workers as `python -m kit.cv` with their spec in the environment; run by
    # hand, `python -m kit.cv ARGS` is `facekit cv ARGS`.
    raise SystemExit(run_module("cv", (lambda argv: worker_main()) if WORKER_ENV in os.environ else main))
