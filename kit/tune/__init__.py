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
`cv --params` reads), trials.csv, PNG plots and a table of the best trials (kit/tune/report.py).

Modules: space (the search space), objective (a trial), workers (processes running trials), storage
(journal file or RDB, heartbeats), optuna_compat (Optuna internals), report (what a study leaves).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from kit.config import NAME_PATTERN, TrainConfig
from kit.errors import ConfigError
from kit.log import log
from kit.models import check_model_config
from kit.paths import Project
from kit.tune.space import check_space, default_space, describe_space, in_space
from kit.tune.storage import describe_storage, open_storage
from kit.tune.workers import run_worker, spawn_workers


@dataclasses.dataclass(frozen=True)
class Study:
    """Which study the trials go to and how it runs (tune's --study, --storage, --space, ... options)."""
    name: str | None = None             # default <model>-<competition>
    storage: str | None = None          # a journal file or a postgresql:// URL (default: the study's journal)
    search_space: dict | None = None    # default: default_space(the resolved config)
    pruner: str = "median"
    baseline: bool = True               # trial 0 is the configuration as given
    heartbeat_interval: int = 30
    grace_period: int = 120
    worker_index: int = 0               # a different number on each machine (varies the sampler seed)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the trials train with and time by: kit.cv.run_cv and the wall clock, unless a test passes fakes.
    Used in this process only (workers=1): worker processes train for real, on the wall clock."""
    train: Callable | None = None
    clock: Callable[[], float] = time.time


@dataclasses.dataclass
class TuneResult:
    study: object           # optuna.Study
    study_dir: Path
    best: dict | None       # the content of best.json (None before the first complete trial)
    exit_code: int          # 0, or 1 when a worker stopped after repeated failures or died


def check_arguments(cfg: TrainConfig, study: Study, *, trials: int, workers: int, folds_per_trial: int,
                    time_limit: float | None) -> None:
    check_model_config(cfg)
    if trials < 0 or workers < 1:
        raise ConfigError("--trials must be >= 0 and --workers >= 1")
    if not 1 <= folds_per_trial <= cfg.folds:
        raise ConfigError(f"--folds-per-trial {folds_per_trial}: must be between 1 and --folds ({cfg.folds})")
    if study.heartbeat_interval < 1 or study.grace_period <= study.heartbeat_interval:
        raise ConfigError("--heartbeat-interval must be >= 1 s and --grace-period longer than it")
    if time_limit is not None and not time_limit > 0:
        raise ConfigError(f"--time-limit {time_limit}: must be a positive duration, e.g. 40m")


def open_study(study_name: str, storage_obj, *, setup: dict):
    """The study (created on first use); one made with another setup is refused: its trials could not be
    compared with new ones."""
    import optuna

    study = optuna.create_study(study_name=study_name, storage=storage_obj, direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("setup")
    if saved is None:
        study.set_user_attr("setup", setup)
        return study
    differences = {k: (saved["fixed"].get(k), v) for k, v in setup["fixed"].items() if saved["fixed"].get(k) != v}
    if saved["folds"] != setup["folds"]:
        differences["folds per trial"] = (saved["folds"], setup["folds"])
    if saved["competition"] != setup["competition"]:
        differences["competition"] = (saved["competition"], setup["competition"])
    if differences:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differences.items())
        raise ConfigError(f"study {study_name!r} was made with another setup ({listed}); its trials could not be "
                          "compared with new ones. Use another --study, or the same options.")
    return study


def describe(study, cfg: TrainConfig, resolved: TrainConfig, options: Study, *, space: dict, folds: list[int],
             trials: int, workers: int, study_dir: Path, competition: str) -> None:
    from kit.tune.report import state_counts

    states = {k: n for k, n in state_counts(study).items() if n}
    log(f"study {study.study_name} ({describe_storage(options.storage, study_dir)}): {sum(states.values())} "
        "trial(s) so far"
        + (" (" + ", ".join(f"{n} {k}" for k, n in states.items()) + ")" if states else "")
        + f"; adding {trials}" + (f" with {workers} workers" if workers > 1 else ""))
    log(f"objective: the competition score pooled over fold(s) {folds} of {cfg.folds} "
        f"(folds/{competition}-k{cfg.folds}-seed{cfg.fold_seed}.csv); {resolved.epochs} epoch(s) at {cfg.size}px, "
        f"model {cfg.model}{'' if resolved.starts_pretrained() else ' from random init'}")
    log("search space (--space FILE.json overrides it):\n"
        + describe_space(space, {k: getattr(resolved, k) for k in space}))
    pruning = f"median of the running cross-fold score, from step {max(1, resolved.epochs // 2)}"
    log(f"pruner: {'none' if options.pruner == 'none' else pruning}"
        f"; heartbeat every {options.heartbeat_interval}s, a silent trial fails after {options.grace_period}s")


def enqueue_baseline(study, resolved: TrainConfig, space: dict) -> None:
    baseline_params = {k: getattr(resolved, k) for k in space}
    if all(in_space(baseline_params[k], space[k]) for k in space):
        study.enqueue_trial(baseline_params, user_attrs={"baseline": True}, skip_if_exists=True)
        log("trial 0 is the baseline: the configuration as given")
    else:
        outside = [k for k in space if not in_space(baseline_params[k], space[k])]
        log(f"no baseline trial: the given {outside} lie outside the search space")


def tune(cfg: TrainConfig, *, trials: int, study: Study = Study(), folds_per_trial: int = 2, workers: int = 1,
         time_limit: float | None = None, root: Path | None = None, report: bool = True,
         hooks: Hooks = Hooks()) -> TuneResult:
    """Add `trials` trials to the study (created on first use) and write its report."""
    import optuna

    from kit.data import locate

    started = hooks.clock()
    project = Project.at(root)
    check_arguments(cfg, study, trials=trials, workers=workers, folds_per_trial=folds_per_trial,
                    time_limit=time_limit)
    _, competition, is_sample = locate(cfg.data, project_root=project.root)
    resolved = cfg.resolved(sample=is_sample)
    cfg = dataclasses.replace(cfg, epochs=resolved.epochs)   # every trial and the pruner count the same epochs
    study_name = study.name or f"{cfg.model}-{competition}"
    if not NAME_PATTERN.fullmatch(study_name):
        raise ConfigError(f"--study {study_name!r}: use letters, digits, '.', '_' and '-'")
    space = study.search_space if study.search_space is not None else default_space(resolved)
    check_space(space, resolved)
    folds = list(range(folds_per_trial))
    study_dir = project.tuning / study_name
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    storage, options = study.storage, study
    storage_obj = open_storage(storage, study_dir, heartbeat_interval=options.heartbeat_interval,
                               grace_period=options.grace_period)
    # What every trial shares (resolved, so `--no-pretrained` and the default for it agree). From random
    # init lr_head just follows the tuned lr_backbone unless it was given.
    follows = () if resolved.starts_pretrained() or cfg.lr_head is not None else ("lr_head",)
    fixed = {k: v for k, v in resolved.result_fields().items() if k not in space and k not in follows}
    study = open_study(study_name, storage_obj, setup={"fixed": fixed, "folds": folds, "competition": competition})
    study.set_user_attr("space", space)
    describe(study, cfg, resolved, options, space=space, folds=folds, trials=trials, workers=workers,
             study_dir=study_dir, competition=competition)
    if options.baseline and trials > 0 and not study.get_trials(deepcopy=False):
        enqueue_baseline(study, resolved, space)

    url = storage if storage and "://" in storage else None   # handed to workers by environment, not argv
    spec = {"cfg": cfg.to_dict(), "study": study_name, "storage": None if url else storage,
            "study_dir": str(study_dir), "root": str(project.root), "space": space, "folds": folds,
            "is_sample": is_sample, "pruner": options.pruner, "heartbeat_interval": options.heartbeat_interval,
            "grace_period": options.grace_period, "deadline": started + time_limit if time_limit else None,
            "worker_index": options.worker_index, "n_trials": trials}
    code = 0
    try:
        if workers > 1 and trials > 0:
            code = spawn_workers(spec, workers, trials, storage=url)
        elif trials > 0:
            code = run_worker(spec, storage_obj=storage_obj, train=hooks.train, clock=hooks.clock)
    finally:
        best = None
        if report:
            from kit.tune.report import write_report

            best = write_report(study, study_dir, data=cfg.data, storage=describe_storage(storage, study_dir))
    return TuneResult(study, study_dir, best, code)
