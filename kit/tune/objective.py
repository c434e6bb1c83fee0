"""A trial: train its folds like `cv`, report the running score after every epoch, return the pooled score."""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from kit.config import TrainConfig
from kit.log import log, tagged
from kit.tune.space import suggest
from kit.tune.storage import fail_dead_trials, process_identity


class TrialTimeUp(Exception):
    """The --time-limit passed during a trial: it stops at the end of the epoch and is marked FAIL."""


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
                   is_sample: bool, deadline: float | None, train, clock=time.time):
    """The objective of a study: `train` is kit.cv.run_cv (tests pass a fake), `deadline` a `clock()` time."""
    import optuna

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", process_identity())
        fail_dead_trials(trial.study)
        params = suggest(trial, space)
        trial_cfg = dataclasses.replace(cfg, **params, only_folds=list(folds), name=f"trial{trial.number}")
        trial.set_user_attr("config", {k: v for k, v in trial_cfg.resolved(sample=is_sample).result_fields().items()})
        run_dir = study_dir / "trials" / str(trial.number)
        if run_dir.exists():  # trial numbers are unique within a study: this is left from a deleted one
            log(f"removing {run_dir}, left by an earlier study of the same name")
            shutil.rmtree(run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        running = RunningScore(folds, cfg.epochs)

        def on_epoch(fold, epoch, scores):
            step, value = running.epoch(fold, epoch, scores.score)
            trial.report(value, step)
            if step < running.last_step and trial.should_prune():  # the last step finishes the trial anyway
                raise optuna.TrialPruned(f"running score {value:.4f} at fold {fold} epoch {epoch} is below "
                                         "the median of earlier trials at that point")
            if deadline is not None and clock() > deadline and step < running.last_step:
                trial.set_user_attr("failure", "stopped by --time-limit")
                raise TrialTimeUp(f"--time-limit reached at fold {fold} epoch {epoch}")

        def on_fold(fold, scores):
            running.fold_done(fold, scores.score)
            trial.set_user_attr("fold_scores", {**trial.user_attrs.get("fold_scores", {}), str(fold): scores.score})

        with tagged(f"trial {trial.number}"):
            shown = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            log(f"start: {', '.join(shown)}")
            try:
                train(trial_cfg, root=root, run_dir=run_dir, on_epoch=on_epoch, on_fold=on_fold)
                pooled = pooled_score(run_dir, folds)
                trial.set_user_attr("scores", pooled.as_dict())
                log(f"done: {pooled}")
                return pooled.score
            finally:  # the winner is retrained by `cv --params`; checkpoints of trials only fill the disk
                for checkpoint in run_dir.glob("fold*/*.pt"):
                    checkpoint.unlink(missing_ok=True)

    return objective
