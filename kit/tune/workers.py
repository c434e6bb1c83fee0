"""The processes that run trials: one in this process, or several local workers on one study.

    run_worker(spec)                  # trials in this process (each worker process runs this)
    spawn_workers(spec, 2, trials=10) # two processes: `python -m kit.tune --run-worker` with the spec in
                                      # the environment (kit/launch.py); GPUs: one each, in turn; CPUs: the
                                      # cores divided
"""
from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

from kit.config import TrainConfig
from kit.device import worker_threads
from kit.gpus import usable_gpus
from kit.launch import Worker, gpu_of, run_workers
from kit.log import log
from kit.processes import Terminated
from kit.tune.objective import make_objective
from kit.tune.storage import fail_dead_trials, open_storage

STORAGE_ENV = "FACEKIT_TUNE_STORAGE"       # how a parent hands an RDB URL (maybe with a password) to workers
WORKER_ENV = "FACEKIT_TUNE_WORKER"         # the JSON spec a worker process runs
MAX_CONSECUTIVE_FAILURES = 3


def stop_on_sigterm():
    """Install the SIGTERM handler; returns the previous one (main() puts it back when it returns). SIGTERM
    (`kill`, a batch scheduler, `timeout`) is handled like Ctrl-C, so Optuna marks the running trial failed
    at once instead of leaving it RUNNING until its heartbeat goes stale."""
    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


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


def run_worker(spec: dict, *, storage_obj=None, train=None, clock=time.time) -> int:
    """Run `spec["n_trials"]` trials of the study in this process. 0 when it ran without stopping early.

    No trial starts after spec["deadline"] (a `clock()` time); a running one stops at its next epoch."""
    import optuna
    from optuna.trial import TrialState

    from kit.cv import run_cv

    optuna.logging.set_verbosity(optuna.logging.WARNING)   # the objective logs each trial itself
    cfg = TrainConfig.from_dict(spec["cfg"], source="the tuner's worker spec")
    study_dir = Path(spec["study_dir"])
    if storage_obj is None:
        storage_obj = open_storage(os.environ.get(STORAGE_ENV) or spec["storage"], study_dir,
                                   heartbeat_interval=spec["heartbeat_interval"], grace_period=spec["grace_period"])
    study = load_study(storage_obj, spec["study"], seed=cfg.seed, worker_index=spec["worker_index"],
                       pruner=spec["pruner"], epochs=cfg.epochs)
    fail_dead_trials(study)
    deadline = spec.get("deadline")
    remaining = None if deadline is None else deadline - clock()
    if spec["n_trials"] <= 0 or (remaining is not None and remaining <= 0):
        return 0
    objective = make_objective(cfg, space=spec["space"], folds=spec["folds"], study_dir=study_dir,
                               root=Path(spec["root"]), is_sample=spec["is_sample"], deadline=deadline,
                               train=train or run_cv, clock=clock)
    failures = []

    def stop_after_repeated_failures(study, trial):
        failures.append(trial.state == TrialState.FAIL and trial.user_attrs.get("failure") != "stopped by --time-limit")
        if len(failures) >= MAX_CONSECUTIVE_FAILURES and all(failures[-MAX_CONSECUTIVE_FAILURES:]):
            log(f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed: this worker stops (see the errors above)")
            study.stop()

    def stop_at_the_deadline(study, trial):
        if deadline is not None and clock() > deadline:
            study.stop()

    # Exceptions in a trial (a NaN, CUDA out of memory, ...) fail that trial, not the whole study.
    study.optimize(objective, n_trials=spec["n_trials"], timeout=remaining, catch=(Exception,),
                   callbacks=[stop_after_repeated_failures, stop_at_the_deadline], gc_after_trial=True)
    return 1 if len(failures) >= MAX_CONSECUTIVE_FAILURES and all(failures[-MAX_CONSECUTIVE_FAILURES:]) else 0


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each of `workers` trial workers: with --device auto (or cuda) the usable GPUs in turn
    (two workers on one GPU share it), else the CPU; --device cpu or cuda:N keeps them all there."""
    if device == "cpu" or device.startswith("cuda:"):
        return [device] * workers
    gpus = usable_gpus()
    return [f"cuda:{gpus[i % len(gpus)].index}" if gpus else "cpu" for i in range(workers)]


def trial_workers(spec: dict, workers: int, trials: int, *, storage: str | None) -> list[Worker]:
    """`workers` trial workers on the study, `trials` split among them, each with its device (a GPU worker
    sees only its GPU, as cuda) and its share of the cores."""
    launched = []
    for i, device in enumerate(worker_devices(spec["cfg"]["device"], workers)):
        share = trials // workers + (i < trials % workers)
        cfg = {**spec["cfg"], "device": "cpu" if device == "cpu" else "cuda",
               "num_threads": worker_threads(workers, spec["cfg"].get("num_threads"))}
        launched.append(Worker("kit.tune", WORKER_ENV, {**spec, "cfg": cfg, "worker_index": i, "n_trials": share},
                               gpu=gpu_of(device), args=("--run-worker",),
                               label=f"worker {i}: {share} trial(s) on {device}, {cfg['num_threads']} thread(s)",
                               env={STORAGE_ENV: storage} if storage else {}))
    return launched


def spawn_workers(spec: dict, workers: int, trials: int, *, storage: str | None) -> int:
    """Start `workers` local processes on the study, `trials` split among them, and wait for them."""
    codes = run_workers(trial_workers(spec, workers, trials, storage=storage))
    failed = [i for i, code in enumerate(codes) if code != 0]
    if failed:
        log(f"worker(s) {failed} exited with {[codes[i] for i in failed]}")
    return 1 if failed else 0
