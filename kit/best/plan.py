"""best's plan: how many epochs each member gets from the time it is given.

    epoch_s, fixed_s = epoch_costs(cfg, n_train=17778, n_test=5926, train_ips=400, infer_ips=1000)
    kept, left_out = allot(plans, available_s=3300, folds=5, max_epochs=40, min_epochs=4)

Each member gets the largest number of epochs per fold whose estimated cost fits its share of the time:
training, scoring the held-out fold after every epoch, and the final held-out and test predictions,
times a safety margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from kit.config import TrainConfig
from kit.errors import ConfigError

SAFETY = 1.15          # sustained training can run slower than the timed bursts: the 5 folds of two 60-minute
                       # runs here took 0.99 and 1.15 of their estimates without the margin


@dataclass
class ModelPlan:
    cfg: TrainConfig
    share_s: float                 # wall seconds this model's cross-validation may take
    train_images_per_s: float
    infer_images_per_s: float
    epoch_s: float                 # estimated seconds of one epoch of one fold (training + held-out scoring)
    fixed_s: float                 # estimated seconds per fold outside the epochs (final predictions)
    epochs: int
    share: float = 1.0             # relative share of the time (--shares)
    label: str = ""                # the --models entry (model name, and its overrides if any)
    resumed: bool = False          # its run exists (an earlier command): its epochs are fixed
    max_epochs: int = 40           # --max-epochs, or the model's EPOCH_CAPS entry if lower
    folds_done: int = 0            # folds finished in this command or before it
    speed: float = 1.0             # seconds seen / seconds estimated, over the folds trained so far
    margin: float = SAFETY         # smaller once real folds have been timed
    setup_s: float = 0.0           # once, before the first fold: a frozen trunk's features (kit/trunk.py)
    second_round: bool = False     # learns from the first round's pseudo-labels: trains after it

    def fold_s(self, epochs: int | None = None) -> float:
        """The estimate of one fold of `epochs` (default: the planned ones), without the margin."""
        return ((self.epochs if epochs is None else epochs) * self.epoch_s + self.fixed_s) * self.speed

    def next_fold_s(self) -> float:
        """The estimate of the next fold, with the margin: the first one also computes the setup."""
        setup = self.setup_s * self.speed if self.folds_done == 0 else 0.0
        return (self.fold_s() + setup) * self.margin

    def estimate_s(self) -> float:
        """What the folds still to train will take, with the margin."""
        return self.next_fold_s() + (self.cfg.folds - self.folds_done - 1) * self.fold_s() * self.margin


def epoch_costs(cfg: TrainConfig, *, n_train: int, n_test: int, train_ips: float, infer_ips: float,
                extra_train: int = 0) -> tuple[float, float]:
    """(seconds of one epoch of one fold, seconds per fold outside the epochs), from measured images/s.

    Epochs are scored on one view of the held-out rows; the final predictions add the flips (--tta).
    `extra_train`: images each epoch trains on besides the fold's rows (pseudo-labelled test images)."""
    views = 2 if cfg.tta else 1
    n_valid = n_train / cfg.folds
    epoch = (n_train - n_valid + extra_train) / train_ips + n_valid / infer_ips
    fixed = (n_valid + n_test) * views / infer_ips
    return epoch, fixed


def plan_epochs(share_s: float, folds: int, epoch_s: float, fixed_s: float, max_epochs: int, *,
                margin: float = SAFETY, speed: float = 1.0) -> int:
    """The most epochs per fold (at most max_epochs) whose estimated cost, with the margin, fits share_s."""
    per_fold = share_s / margin / speed / folds - fixed_s
    return max(0, min(max_epochs, math.floor(per_fold / epoch_s)))


def allot(plans: list[ModelPlan], available_s: float, *, folds: int, max_epochs: int,
          min_epochs: int) -> tuple[list[ModelPlan], list[ModelPlan]]:
    """Share `available_s` among the plans by their shares and plan each one's epochs.

    A blend of models that each train too briefly loses to one model trained longer (measured here,
    resnet18 runs of 1, 3 and 4 epochs: 0.648, 0.779, 0.805; blending two models gained 0.011). So
    while a model would get fewer than `min_epochs`, the last model in the list is left out and its
    time goes to the others. Returns (kept plans, left-out plans)."""
    for plan in plans:
        plan.max_epochs = min(plan.max_epochs, max_epochs)
    kept, left_out = list(plans), []
    while True:
        share_out(kept, available_s, folds)
        short = [p for p in kept if not p.resumed and p.epochs < min(min_epochs, p.max_epochs)]
        if not short or len(kept) == 1:
            return kept, left_out
        left_out.insert(0, kept.pop())


def share_out(plans: list[ModelPlan], available_s: float, folds: int) -> None:
    """Split `available_s` among `plans` by share and plan their epochs. A model capped below what its
    share buys (or resumed with its epochs fixed) keeps only its estimate; the rest goes to the others."""
    fixed: dict[int, float] = {}       # plan index -> seconds it keeps
    while True:
        open_plans = [i for i in range(len(plans)) if i not in fixed]
        left = available_s - sum(fixed.values())
        total_share = sum(plans[i].share for i in open_plans)
        newly_fixed = False
        for i in open_plans:
            plan = plans[i]
            plan.share_s = left * plan.share / total_share
            if not plan.resumed:
                plan.epochs = plan_epochs(plan.share_s - plan.setup_s * plan.speed * plan.margin, folds,
                                          plan.epoch_s, plan.fixed_s, plan.max_epochs, margin=plan.margin,
                                          speed=plan.speed)
            if (plan.resumed or plan.epochs == plan.max_epochs) and plan.estimate_s() < plan.share_s:
                fixed[i] = plan.share_s = plan.estimate_s()
                newly_fixed = True
        if not newly_fixed or len(fixed) == len(plans):
            return


class Schedule:
    """The plan, kept up to date as folds finish: the members training or trained (their epochs fixed),
    the members still to start, and those waiting for time (left out, or spares).

    After every fold, `observe` compares the fold's seconds with their estimate; `replan` then spreads the
    time left over the members not started yet, waiting ones included, with estimates scaled by what the
    machine really does: a slow first measurement costs no member, and time a capped member does not need
    goes to another member or more epochs."""

    SEEN_MARGIN = 1.05   # once folds have been timed, the margin only covers one fold's noise

    def __init__(self, kept: list[ModelPlan], waiting: list[ModelPlan], *, folds: int, max_epochs: int,
                 min_epochs: int):
        self.plans, self.waiting = kept, waiting
        self.folds, self.max_epochs, self.min_epochs = folds, max_epochs, min_epochs
        self.seen_s = self.estimated_s = 0.0

    def next_plan(self) -> ModelPlan | None:
        """The member to train next: a started one finishes first; then first-round members at their epoch
        cap, which cannot use more time than they have, so that the members which can are planned last,
        from the most folds timed (one bad measurement cannot leave the end of the hour idle); second-round
        members once the first round is done."""
        todo = [p for p in self.plans if p.folds_done < p.cfg.folds]
        return min(todo, key=lambda p: (not p.resumed, p.second_round, p.epochs < p.max_epochs), default=None)

    def start(self, plan: ModelPlan) -> None:
        plan.resumed = True   # from now on its epochs are fixed, as a resumed run's are

    def observe(self, plan: ModelPlan, seconds: float, *, epochs: int | None = None) -> None:
        """A fold of `plan` was trained in `seconds` (its first fold with the setup: a frozen trunk's features).
        `epochs`: those it trained, when the time limit cut it short; a cut fold is as fast as the epochs it
        ran, not a sign of a fast machine (which would then cut the next folds shorter still)."""
        self.estimated_s += plan.fold_s(epochs) / plan.speed + (plan.setup_s if plan.folds_done == 0 else 0.0)
        self.seen_s += seconds
        plan.folds_done += 1

    def replan(self, available_s: float) -> list[str]:
        """Re-split `available_s` (from now to the deadline, less the reserve); returns what changed."""
        speed = self.seen_s / self.estimated_s if self.estimated_s else 1.0
        for plan in self.plans + self.waiting:
            plan.speed, plan.margin = speed, self.SEEN_MARGIN
        before = {p.label: p.epochs for p in self.plans}
        committed = sum(p.estimate_s() for p in self.plans if p.resumed)
        open_plans = [p for p in self.plans if not p.resumed] + self.waiting
        kept, left_out = allot(open_plans, available_s - committed, folds=self.folds, max_epochs=self.max_epochs,
                               min_epochs=self.min_epochs) if open_plans else ([], [])
        if kept and not kept[0].resumed and kept[0].epochs < min(self.min_epochs, kept[0].max_epochs):
            kept, left_out = [], kept + left_out   # not even one more member fits now
        self.plans = [p for p in self.plans if p.resumed] + kept
        self.waiting = left_out
        after = {p.label: p.epochs for p in self.plans}
        changes = [f"{label}: {before[label]} -> {epochs} epoch(s)" for label, epochs in after.items()
                   if label in before and before[label] != epochs]
        changes += [f"{label}: joins with {epochs} epoch(s)" for label, epochs in after.items() if label not in before]
        changes += [f"{label}: left out (no time for it)" for label in before if label not in after]
        if changes:
            changes.insert(0, f"the machine runs at {1 / speed:.2f}x the measured speed")
        return changes


def parse_shares(text: str | None, models: list[str]) -> list[float]:
    if not text:
        return [1.0] * len(models)
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--shares {text!r}: expected numbers like 2,1") from None
    if len(shares) != len(models) or any(s <= 0 for s in shares):
        raise ConfigError(f"--shares {text!r}: need one positive number per model ({', '.join(models)})")
    return shares
