"""Optuna search over the training options, scored like `cv` on the same persisted folds.

    ./run.sh tune --trials 30 --model resnet18 --data ../shared/data/utkface-age-gender.zip
    ./run.sh tune --trials 10 --workers 2 --study r18          # two local processes, one study
    ./run.sh tune --trials 10 --storage postgresql://u:p@host/db --study r18   # on every machine
    ./run.sh cv resnet18 --params tuning/r18/best.json         # the winner on all folds

A trial trains `--folds-per-trial` folds (the first N of folds/<competition>-k<K>-seed<S>.csv, the
file `cv` uses) under tuning/<study>/trials/<number>/ and scores their pooled held-out predictions
with the competition metric. `--trials N` adds N trials to the study; running the command again
resumes it. The first trial of a new study is the baseline: the configuration as given (defaults
plus your options), so the report says what tuning gained over it. At the end: best.json (what
`cv --params` reads), trials.csv, PNG plots and a table of the best trials (kit/tune_report.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from kit.config import TrainConfig, UserError, add_train_arguments, check_config, config_from_args, parse_duration
from kit.tune_space import check_space, default_space, describe_space, in_space, load_space, suggest
from kit.tune_storage import describe_storage, fail_dead_trials, open_storage, process_identity

STORAGE_ENV = "FACEKIT_TUNE_STORAGE"       # how a parent hands an RDB URL (maybe with a password) to workers
WORKER_ENV = "FACEKIT_TUNE_WORKER"         # the JSON spec a worker process runs
MAX_CONSECUTIVE_FAILURES = 3

# ----------------------------------------------------------------------------- the objective

class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler, `timeout`): handled like Ctrl-C, so Optuna marks the running
    trial failed at once instead of leaving it RUNNING until its heartbeat goes stale."""


def stop_on_sigterm():
    """Install the SIGTERM handler; returns the previous one (main() puts it back when it returns)."""
    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


class TrialTimeUp(Exception):
    """The --timeout passed during a trial: it stops at the end of the epoch and is marked FAIL."""


class RunningScore:
    """The intermediate value reported after every epoch: the mean over the trial's folds so far of each
    fold's best score (finished folds: final; the current fold: best epoch so far). Step = global epoch
    index (fold position * epochs + epoch), so each step is reported once and every trial's step k
    means the same point of the same folds."""

    def __init__(self, folds: list[int], epochs: int):
        self.position, self.epochs = {f: i for i, f in enumerate(folds)}, epochs
        self.last_step = len(folds) * epochs - 1
        self.finished: dict[int, float] = {}
        self.current: tuple[int, float] | None = None

    def epoch(self, fold: int, epoch: int, score: float) -> tuple[int, float]:
        best = score if self.current is None or self.current[0] != fold else max(self.current[1], score)
        self.current = (fold, best)
        values = [v for f, v in self.finished.items() if f != fold] + [best]
        return self.position[fold] * self.epochs + epoch, sum(values) / len(values)

    def fold_done(self, fold: int, score: float) -> None:
        self.finished[fold] = score


def pooled_score(run_dir: Path, folds: list[int]):
    """The competition metric over the held-out rows of `folds`, pooled (as `cv` scores all folds)."""
    import pandas as pd

    from kit.metric import score_probabilities

    oof = pd.concat([pd.read_csv(run_dir / f"fold{k}" / "oof.csv") for k in folds])
    return score_probabilities(oof["gender"], oof["gender_prob"], oof["age"], oof["age_pred"])


def make_objective(cfg: TrainConfig, *, space: dict, folds: list[int], study_dir: Path, root: Path,
                   is_sample: bool, deadline: float | None, tag: str, train, log=print):
    import optuna

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", process_identity())
        fail_dead_trials(trial.study, log=log)
        params = suggest(trial, space)
        trial_cfg = dataclasses.replace(cfg, **params, only_folds=list(folds), name=f"trial{trial.number}")
        trial.set_user_attr("config", {k: v for k, v in trial_cfg.resolved(sample=is_sample).result_fields().items()})
        run_dir = study_dir / "trials" / str(trial.number)
        if run_dir.exists():  # trial numbers are unique within a study: this is left from a deleted one
            log(f"removing {run_dir}, left by an earlier study of the same name")
            shutil.rmtree(run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        prefix = f"[{tag}trial {trial.number}] "
        shown = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        log(f"{prefix}start: {', '.join(shown)}")
        running = RunningScore(folds, cfg.epochs)

        def on_epoch(fold, epoch, scores):
            step, value = running.epoch(fold, epoch, scores.score)
            trial.report(value, step)
            if step < running.last_step and trial.should_prune():  # the last step finishes the trial anyway
                raise optuna.TrialPruned(f"running score {value:.4f} at fold {fold} epoch {epoch} is below "
                                         "the median of earlier trials at that point")
            if deadline is not None and time.time() > deadline and step < running.last_step:
                trial.set_user_attr("failure", "stopped by --timeout")
                raise TrialTimeUp(f"--timeout reached at fold {fold} epoch {epoch}")

        def on_fold(fold, scores):
            running.fold_done(fold, scores.score)
            trial.set_user_attr("fold_scores", {**trial.user_attrs.get("fold_scores", {}), str(fold): scores.score})

        try:
            train(trial_cfg, root=root, run_dir=run_dir, on_epoch=on_epoch, on_fold=on_fold,
                  log=lambda text: log(prefix + str(text)))
            pooled = pooled_score(run_dir, folds)
            trial.set_user_attr("scores", pooled.as_dict())
            log(f"{prefix}done: {pooled}")
            return pooled.score
        finally:  # the winner is retrained by `cv --params`; checkpoints of trials only fill the disk
            for checkpoint in run_dir.glob("fold*/*.pt"):
                checkpoint.unlink(missing_ok=True)

    return objective


# ----------------------------------------------------------------------------- running trials

def make_sampler(seed: int, worker_index: int, n_existing: int):
    """Seeded TPE; the seed also mixes in the worker and the study's size, so parallel workers and resumed
    studies do not replay the same random start-up points."""
    import numpy as np
    import optuna

    derived = int(np.random.default_rng([seed, worker_index, n_existing]).integers(2**31))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=derived, n_startup_trials=5, multivariate=True, constant_liar=True)


def make_pruner(kind: str, epochs: int):
    """MedianPruner on the running cross-fold score, not WilcoxonPruner: Wilcoxon pairs per-instance
    (per-fold) scores with the best trial's and needs several folds before its test can say anything,
    so with the 1-2 folds a trial affords it could only stop a trial after its last fold, when nothing
    is saved any more; and epoch scores on a learning curve are not the exchangeable instances it
    assumes. The median of other trials at the same (fold, epoch) step compares like with like and
    stops a weak trial within its first fold. No pruning during the first half of the first fold: warm-up
    schedules (onecycle, cosine) start slow and would be cut unfairly."""
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 2))


def load_study(storage_obj, study_name: str, *, seed: int, worker_index: int, pruner: str, epochs: int):
    import optuna

    probe = optuna.load_study(study_name=study_name, storage=storage_obj)
    n_existing = len(probe.get_trials(deepcopy=False))
    return optuna.load_study(study_name=study_name, storage=storage_obj, pruner=make_pruner(pruner, epochs),
                             sampler=make_sampler(seed, worker_index, n_existing))


def run_worker(spec: dict, *, storage_obj=None, train=None, log=print) -> int:
    """Run `spec["n_trials"]` trials of the study in this process. 0 when it ran without stopping early."""
    import optuna
    from optuna.trial import TrialState

    from kit.cv import run_cv

    optuna.logging.set_verbosity(optuna.logging.WARNING)   # the objective logs each trial itself
    cfg = TrainConfig.from_dict(spec["cfg"])
    study_dir = Path(spec["study_dir"])
    if storage_obj is None:
        storage_obj = open_storage(os.environ.get(STORAGE_ENV) or spec["storage"], study_dir,
                                   heartbeat_interval=spec["heartbeat_interval"], grace_period=spec["grace_period"])
    study = load_study(storage_obj, spec["study"], seed=cfg.seed, worker_index=spec["worker_index"],
                       pruner=spec["pruner"], epochs=cfg.epochs)
    fail_dead_trials(study, log=log)
    deadline = spec.get("deadline")
    remaining = None if deadline is None else deadline - time.time()
    if spec["n_trials"] <= 0 or (remaining is not None and remaining <= 0):
        return 0
    tag = f"w{spec['worker_index']} " if spec.get("tagged") else ""
    objective = make_objective(cfg, space=spec["space"], folds=spec["folds"], study_dir=study_dir,
                               root=Path(spec["root"]), is_sample=spec["is_sample"], deadline=deadline, tag=tag,
                               train=train or run_cv, log=log)
    failures = []

    def stop_after_repeated_failures(study, trial):
        failures.append(trial.state == TrialState.FAIL and trial.user_attrs.get("failure") != "stopped by --timeout")
        if len(failures) >= MAX_CONSECUTIVE_FAILURES and all(failures[-MAX_CONSECUTIVE_FAILURES:]):
            log(f"{tag}{MAX_CONSECUTIVE_FAILURES} trials in a row failed: this worker stops (see the errors above)")
            study.stop()

    # Exceptions in a trial (a NaN, CUDA out of memory, ...) fail that trial, not the whole study.
    study.optimize(objective, n_trials=spec["n_trials"], timeout=remaining, catch=(Exception,),
                   callbacks=[stop_after_repeated_failures], gc_after_trial=True)
    return 1 if len(failures) >= MAX_CONSECUTIVE_FAILURES and all(failures[-MAX_CONSECUTIVE_FAILURES:]) else 0


def spawn_workers(spec: dict, workers: int, trials: int, *, storage: str | None, log=print) -> int:
    """Start `workers` local processes on the study, `trials` split among them. Several GPUs: one each."""
    gpus = visible_gpus()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    kit_parent = str(Path(__file__).resolve().parents[1])
    processes = []
    for i in range(workers):
        share = trials // workers + (i < trials % workers)
        cfg = dict(spec["cfg"])
        if cfg.get("num_threads") is None and not gpus:
            cfg["num_threads"] = max(1, cores // workers)   # the CPU cores, divided
        env = {**os.environ, WORKER_ENV: json.dumps({**spec, "cfg": cfg, "worker_index": i, "n_trials": share,
                                                     "tagged": True}),
               "PYTHONPATH": os.pathsep.join(filter(None, [kit_parent, os.environ.get("PYTHONPATH")])),
               "TQDM_DISABLE": "1"}
        if storage:
            env[STORAGE_ENV] = storage
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        log(f"worker {i}: {share} trial(s)" + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if len(gpus) > 1 else "")
            + (f", {cfg['num_threads']} thread(s)" if cfg.get("num_threads") else ""))
        processes.append(subprocess.Popen([sys.executable, "-m", "kit.tune", "--run-worker"], env=env))
    codes = []
    for process in processes:
        while True:
            try:
                codes.append(process.wait())
                break
            except Terminated:  # a SIGTERM reaches only this process: pass it on, then wait for them
                for running in processes:
                    if running.poll() is None:
                        running.terminate()
            except KeyboardInterrupt:  # the workers got the Ctrl-C too: let them fail their trials and exit
                continue
    failed = [i for i, code in enumerate(codes) if code != 0]
    if failed:
        log(f"worker(s) {failed} exited with {[codes[i] for i in failed]}")
    return 1 if failed else 0


def visible_gpus() -> list[str]:
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        count = 0
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


# ----------------------------------------------------------------------------- the study

def tune(cfg: TrainConfig, *, trials: int, study_name: str | None = None, storage: str | None = None,
         folds_per_trial: int = 2, workers: int = 1, timeout: float | None = None, root: Path | None = None,
         search_space: dict | None = None, pruner: str = "median", baseline: bool = True,
         heartbeat_interval: int = 30, grace_period: int = 120, worker_index: int = 0, report: bool = True,
         train=None, log=print) -> "TuneResult":
    """Add `trials` trials to the study (created on first use) and write its report.

    `train` replaces kit.cv.run_cv (tests inject a fake); it is only used in this process (workers=1).
    """
    import optuna

    from kit.cv import project_root
    from kit.data import locate

    started = time.time()
    root = Path(root or project_root())
    check_config(cfg)
    if trials < 0 or workers < 1:
        raise UserError("--trials must be >= 0 and --workers >= 1")
    if not 1 <= folds_per_trial <= cfg.folds:
        raise UserError(f"--folds-per-trial {folds_per_trial}: must be between 1 and --folds ({cfg.folds})")
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise UserError("--heartbeat-interval must be >= 1 s and --grace-period longer than it")
    _, competition, is_sample = locate(cfg.data, project_root=root)
    resolved = cfg.resolved(sample=is_sample)
    study_name = study_name or f"{cfg.model}-{competition}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", study_name):
        raise UserError(f"--study {study_name!r}: use letters, digits, '.', '_' and '-'")
    space = search_space if search_space is not None else default_space(resolved)
    check_space(space, resolved)
    folds = list(range(folds_per_trial))
    study_dir = root / "tuning" / study_name
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    storage_obj = open_storage(storage, study_dir, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = optuna.create_study(study_name=study_name, storage=storage_obj, direction="maximize", load_if_exists=True)
    # What every trial shares (resolved, so `--no-pretrained` and the default for it agree). From random
    # init lr_head just follows the tuned lr_backbone unless it was given.
    follows = () if resolved.starts_pretrained() or cfg.lr_head is not None else ("lr_head",)
    fixed = {k: v for k, v in resolved.result_fields().items() if k not in space and k not in follows}
    setup = {"fixed": fixed, "folds": folds, "competition": competition}
    saved = study.user_attrs.get("setup")
    if saved is None:
        study.set_user_attr("setup", setup)
    else:
        differences = {k: (saved["fixed"].get(k), v) for k, v in fixed.items() if saved["fixed"].get(k) != v}
        if saved["folds"] != folds:
            differences["folds per trial"] = (saved["folds"], folds)
        if saved["competition"] != competition:
            differences["competition"] = (saved["competition"], competition)
        if differences:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differences.items())
            raise UserError(f"study {study_name!r} was made with another setup ({listed}); its trials could not be "
                            "compared with new ones. Use another --study, or the same options.")
    study.set_user_attr("space", space)

    from kit.tune_report import state_counts

    baseline_params = {k: getattr(resolved, k) for k in space}
    states = {k: n for k, n in state_counts(study).items() if n}
    log(f"study {study_name} ({describe_storage(storage, study_dir)}): {sum(states.values())} trial(s) so far"
        + (" (" + ", ".join(f"{n} {k}" for k, n in states.items()) + ")" if states else "")
        + f"; adding {trials}" + (f" with {workers} workers" if workers > 1 else ""))
    log(f"objective: the competition score pooled over fold(s) {folds} of {cfg.folds} "
        f"(folds/{competition}-k{cfg.folds}-seed{cfg.seed}.csv); {cfg.epochs} epoch(s) at {cfg.size}px, "
        f"model {cfg.model}{'' if resolved.starts_pretrained() else ' from random init'}")
    log("search space (--space FILE.json overrides it):\n" + describe_space(space, baseline_params))
    pruning = f"median of the running cross-fold score, from step {max(1, cfg.epochs // 2)}"
    log(f"pruner: {'none' if pruner == 'none' else pruning}"
        f"; heartbeat every {heartbeat_interval}s, a silent trial fails after {grace_period}s")

    if baseline and trials > 0 and not study.get_trials(deepcopy=False):
        if all(in_space(baseline_params[k], space[k]) for k in space):
            study.enqueue_trial(baseline_params, user_attrs={"baseline": True}, skip_if_exists=True)
            log("trial 0 is the baseline: the configuration as given")
        else:
            outside = [k for k in space if not in_space(baseline_params[k], space[k])]
            log(f"no baseline trial: the given {outside} lie outside the search space")

    url = storage if storage and "://" in storage else None   # handed to workers by environment, not argv
    spec = {"cfg": cfg.to_dict(), "study": study_name, "storage": None if url else storage,
            "study_dir": str(study_dir), "root": str(root), "space": space, "folds": folds, "is_sample": is_sample,
            "pruner": pruner, "heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
            "deadline": started + timeout if timeout else None, "worker_index": worker_index, "n_trials": trials}
    code = 0
    try:
        if workers > 1 and trials > 0:
            code = spawn_workers(spec, workers, trials, storage=url, log=log)
        elif trials > 0:
            code = run_worker(spec, storage_obj=storage_obj, train=train, log=log)
    finally:
        best = None
        if report:
            from kit.tune_report import write_report

            best = write_report(study, study_dir, log=log, data=cfg.data, storage=describe_storage(storage, study_dir))
    return TuneResult(study, study_dir, best, code)


@dataclasses.dataclass
class TuneResult:
    study: object           # optuna.Study
    study_dir: Path
    best: dict | None       # the content of best.json (None before the first complete trial)
    exit_code: int          # 0, or 1 when a worker stopped after repeated failures or died


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kit tune", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, required=True,
                        help="trials to add to the study (0: only rewrite the report)")
    parser.add_argument("--model", default="resnet18", help="registered model: resnet18 (default), scratch or dlib_age")
    parser.add_argument("--study", help="study name (default: MODEL-COMPETITION); files go to tuning/<study>/")
    parser.add_argument("--storage", help="Optuna RDB URL (postgresql://user:pass@host/db) shared by workers on "
                        "several machines, or a journal file path (default: tuning/<study>/journal.log)")
    parser.add_argument("--folds-per-trial", type=int, default=2,
                        help="folds each trial trains (the first N of the persisted folds; default 2)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes on the study (default 1)")
    parser.add_argument("--timeout", type=parse_duration,
                        help="wall time, e.g. 40m: no trial starts after it, a running one stops at its next epoch")
    parser.add_argument("--space", help="JSON file overriding the search space (see the printed default)")
    parser.add_argument("--pruner", choices=("median", "none"), default="median")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not start a new study with the configuration as given")
    parser.add_argument("--heartbeat-interval", type=int, default=30, help="seconds between a trial's heartbeats")
    parser.add_argument("--grace-period", type=int, default=120,
                        help="seconds without a heartbeat after which a running trial is failed (default 120)")
    parser.add_argument("--worker-index", type=int, default=0,
                        help="with workers on several machines: a different number on each (varies the sampler seed)")
    parser.add_argument("--run-worker", action="store_true", help=argparse.SUPPRESS)
    add_train_arguments(parser)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous_handler = stop_on_sigterm()
    try:
        return run_command(argv)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def run_command(argv: list[str]) -> int:
    if argv == ["--run-worker"]:   # a process started by spawn_workers
        spec = json.loads(os.environ[WORKER_ENV])
        tag = f"[w{spec['worker_index']}] "
        try:
            return run_worker(spec, log=lambda text: print(text if text.startswith("[") else tag + text, flush=True))
        except KeyboardInterrupt:
            return 130
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        space = None
        if args.space:
            from kit.data import locate
            from kit.cv import project_root

            _, _, is_sample = locate(cfg.data, project_root=project_root())
            check_config(cfg)
            space = load_space(args.space, cfg.resolved(sample=is_sample))
        result = tune(cfg, trials=args.trials, study_name=args.study, storage=args.storage,
                     folds_per_trial=args.folds_per_trial, workers=args.workers, timeout=args.timeout,
                     search_space=space, pruner=args.pruner, baseline=args.baseline,
                     heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                     worker_index=args.worker_index, log=lambda text: print(text, flush=True))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the study keeps every finished trial; run the command again to continue", file=sys.stderr)
        return 130
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
