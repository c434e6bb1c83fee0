"""The processes that run trials: one in this process, or several local workers on one study.

    run_worker(spec)                  # trials in this process (each worker process runs this)
    spawn_workers(spec, 2, trials=10) # two processes: `python -m kit.tune --run-worker` with the spec in
                                      # the environment; several GPUs: one each; CPUs: the cores divided
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from kit.config import TrainConfig
from kit.log import log
from kit.tune.objective import make_objective
from kit.tune.storage import fail_dead_trials, open_storage

STORAGE_ENV = "FACEKIT_TUNE_STORAGE"       # how a parent hands an RDB URL (maybe with a password) to workers
WORKER_ENV = "FACEKIT_TUNE_WORKER"         # the JSON spec a worker process runs
MAX_CONSECUTIVE_FAILURES = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler, `timeout`): handled like Ctrl-C, so Optuna marks the running
    trial failed at once instead of leaving it RUNNING until its heartbeat goes stale."""


def stop_on_sigterm():
    """Install the SIGTERM handler; returns the previous one (main() puts it back when it returns)."""
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


def spawn_workers(spec: dict, workers: int, trials: int, *, storage: str | None) -> int:
    """Start `workers` local processes on the study, `trials` split among them. Several GPUs: one each."""
    gpus = visible_gpus()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    kit_parent = str(Path(__file__).resolve().parents[2])
    processes = []
    for i in range(workers):
        share = trials // workers + (i < trials % workers)
        cfg = dict(spec["cfg"])
        if cfg.get("num_threads") is None and not gpus:
            cfg["num_threads"] = max(1, cores // workers)   # the CPU cores, divided
        env = {**os.environ, WORKER_ENV: json.dumps({**spec, "cfg": cfg, "worker_index": i, "n_trials": share}),
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
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES' names where it is set). A CUDA that is there
    but broken raises here rather than passing for "no GPUs"."""
    import torch

    count = torch.cuda.device_count()
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]
