"""best's plan: how many epochs each member gets from the time it is given.

    epoch_s, fixed_s = epoch_costs(cfg, n_train=17778, n_test=5926, train_ips=400, infer_ips=1000)
    kept, left_out = allot(plans, available_s=3300, folds=5, max_epochs=40, min_epochs=4)

Each member gets the largest number of epochs per fold whose estimated cost fits its share of the time:
training, scoring the held-out fold and writing its checkpoints after every epoch, and the final held-out
and test predictions, times a safety margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from kit.config import TrainConfig
from kit.errors import ConfigError

SAFETY = 1.15          # sustained training can run slower than the timed bursts: the 5 folds of two 60-minute
                       # runs here took 0.99 and 1.15 of their estimates without the margin
EPOCH_STEP = 0.1       # plans are in tenths of an epoch: a fold's schedule runs over its steps (kit/train.py), so
                       # the time between two whole epochs is trained, not left idle


@dataclass
class ModelPlan:
    cfg: TrainConfig
    share_s: float                 # wall seconds this model's cross-validation may take
    train_images_per_s: float
    infer_images_per_s: float
    epoch_s: float                 # estimated seconds of one epoch of one fold (training, held-out scoring,
                                   # its checkpoints written)
    fixed_s: float                 # estimated seconds per fold outside the epochs (final predictions)
    epochs: float                  # per fold, in tenths of an epoch
    share: float = 1.0             # relative share of the time (--shares)
    label: str = ""                # the --models entry (model name, and its overrides if any)
    resumed: bool = False          # started (in this command or an earlier one): never left out any more
    max_epochs: int = 40           # --max-epochs, or the model's EPOCH_CAPS entry if lower: its run's --epochs
    folds_done: int = 0            # folds finished in this command or before it
    speed: float = 1.0             # seconds seen / seconds estimated, over the folds trained so far
    margin: float = SAFETY         # smaller once real folds have been timed
    setup_s: float = 0.0           # once, before the first fold: a frozen trunk's features (kit/trunk.py)
    second_round: bool = False     # learns from the first round's pseudo-labels: trains after it
    run_epochs: int | None = None  # the --epochs of its run when an earlier command made it
    trained: list[float] | None = None   # the epochs each of its folds trained, once all are done
    seen_s: float = 0.0            # seconds its folds took in this command
    timed_s: float = 0.0           # what the measurement estimated for those same folds

    def fold_s(self, epochs: float | None = None) -> float:
        """The estimate of one fold of `epochs` (default: the planned ones), without the margin."""
        return ((self.epochs if epochs is None else epochs) * self.epoch_s + self.fixed_s) * self.speed

    def next_fold_s(self) -> float:
        """The estimate of the next fold, with the margin: the first one also computes the setup."""
        setup = self.setup_s * self.speed if self.folds_done == 0 else 0.0
        return (self.fold_s() + setup) * self.margin

    @property
    def folds_left(self) -> int:
        return self.cfg.folds - self.folds_done

    def estimate_s(self) -> float:
        """What the folds still to train will take, with the margin."""
        if self.folds_left <= 0:
            return 0.0
        return self.next_fold_s() + (self.folds_left - 1) * self.fold_s() * self.margin


def epoch_costs(cfg: TrainConfig, *, n_train: int, n_test: int, train_ips: float, infer_ips: float,
                extra_train: int = 0, checkpoint_s: float = 0.0) -> tuple[float, float]:
    """(seconds of one epoch of one fold, seconds per fold outside the epochs), from measured images/s.

    Epochs are scored on one view of the held-out rows; the final predictions add the flips (--tta).
    `extra_train`: images each epoch trains on besides the fold's rows (pseudo-labelled test images).
    `checkpoint_s`: an epoch's fixed cost, whatever its images: best.pt and last.pt written after it
    (kit/train.py), which no images/s figure covers."""
    views = 2 if cfg.tta else 1
    n_valid = n_train / cfg.folds
    epoch = (n_train - n_valid + extra_train) / train_ips + n_valid / infer_ips + checkpoint_s
    fixed = (n_valid + n_test) * views / infer_ips
    return epoch, fixed


def plan_epochs(share_s: float, folds: int, epoch_s: float, fixed_s: float, max_epochs: int, *,
                margin: float = SAFETY, speed: float = 1.0) -> float:
    """The most epochs per fold, in tenths (at most max_epochs), whose estimated cost, with the margin, fits
    share_s."""
    per_fold = share_s / margin / speed / max(1, folds) - fixed_s
    tenths = math.floor(round(per_fold / epoch_s / EPOCH_STEP, 6))
    return max(0.0, min(float(max_epochs), round(tenths * EPOCH_STEP, 1)))


def allot(plans: list[ModelPlan], available_s: float, *, folds: int, max_epochs: int,
          min_epochs: int) -> tuple[list[ModelPlan], list[ModelPlan]]:
    """Share `available_s` among the plans by their shares and plan each one's epochs for its folds still to
    train (`folds` is the folds of a member not started).

    A blend of models that each train too briefly loses to one model trained longer (measured here,
    resnet18 runs of 1, 3 and 4 epochs: 0.648, 0.779, 0.805; blending two models gained 0.011). So
    while a member not started yet would get fewer than `min_epochs`, the last one of those is left out
    and its time goes to the others. Returns (kept plans, left-out plans)."""
    for plan in plans:
        plan.max_epochs = min(plan.max_epochs, max_epochs)
    kept, left_out = list(plans), []
    while True:
        share_out(kept, available_s)
        short = [p for p in kept if too_short(p, min_epochs)]
        unstarted = [p for p in kept if not p.resumed]
        if not short or not unstarted or len(kept) == 1:
            return kept, left_out
        left = unstarted[-1]
        kept.remove(left)
        left_out.insert(0, left)


def too_short(plan: ModelPlan, min_epochs: int) -> bool:
    """A plan not started that would train fewer than `min_epochs` (or its cap) per fold as planned."""
    return not plan.resumed and plan.epochs < min(min_epochs, plan.max_epochs)


def share_out(plans: list[ModelPlan], available_s: float) -> None:
    """Split `available_s` among `plans` by share and plan the epochs of their folds still to train. A model
    capped below what its share buys keeps only its estimate; the rest goes to the others."""
    fixed = {i: 0.0 for i, plan in enumerate(plans) if plan.folds_left <= 0}   # plan index -> seconds it keeps
    for i in fixed:
        plans[i].share_s = 0.0
    while len(fixed) < len(plans):
        open_plans = [i for i in range(len(plans)) if i not in fixed]
        left = available_s - sum(fixed.values())
        # Shares are per fold: a started member's last folds get what its first ones had, not half the time.
        weight = {i: plans[i].share * plans[i].folds_left / plans[i].cfg.folds for i in open_plans}
        total_share = sum(weight.values())
        newly_fixed = False
        for i in open_plans:
            plan = plans[i]
            plan.share_s = left * weight[i] / total_share
            setup = plan.setup_s * plan.speed * plan.margin if plan.folds_done == 0 else 0.0
            plan.epochs = plan_epochs(plan.share_s - setup, plan.folds_left, plan.epoch_s, plan.fixed_s,
                                      plan.max_epochs, margin=plan.margin, speed=plan.speed)
            if plan.epochs == plan.max_epochs and plan.estimate_s() < plan.share_s:
                fixed[i] = plan.share_s = plan.estimate_s()
                newly_fixed = True
        if not newly_fixed:
            return


def with_spares(plans: list[ModelPlan], spares: list[ModelPlan], available_s: float, *, folds: int, max_epochs: int,
                min_epochs: int) -> tuple[list[ModelPlan], list[ModelPlan]]:
    """(kept, waiting) of a first plan: the members allotted (a lone one kept even below `min_epochs`), then each
    spare, in order, that joins in time they do not need (Schedule.admit, the re-plan's rule)."""
    kept, left_out = allot(plans, available_s, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)
    schedule = Schedule(kept, left_out + spares, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)
    kept = schedule.admit(kept, available_s)
    return kept, [p for p in schedule.waiting if p not in kept]


class Schedule:
    """The plan, kept up to date as folds finish: the members started (never left out again: their runs
    are to be finished), the members still to start, and those waiting for time (left out, or spares).
    A member's epochs are per fold: each fold trains what the plan gives it when it starts.

    After every fold, `observe` compares the fold's seconds with their estimate; `replan` then spreads the
    time left over the members not started yet, waiting ones included. Each member's speed is its own: its
    estimates are scaled by what its own folds took, never by another member's (their timings err apart:
    on a 2x faster Xeon one member was timed 13% high and the other 10% low, so a shared factor moved the
    second one's plan the wrong way and left the end of the hour idle). Time a capped member does not need
    goes to another member, never to epochs past a cap."""

    SEEN_MARGIN = 1.05   # once folds have been timed, the margin only covers one fold's noise

    def __init__(self, kept: list[ModelPlan], waiting: list[ModelPlan], *, folds: int, max_epochs: int,
                 min_epochs: int):
        self.plans, self.waiting = kept, waiting
        self.folds, self.max_epochs, self.min_epochs = folds, max_epochs, min_epochs

    def next_plan(self) -> ModelPlan | None:
        """The member to train next: a started one finishes first; then first-round members at their epoch
        cap, which cannot use more time than they have, so that the members which can are planned last,
        from the most folds timed (one bad measurement cannot leave the end of the hour idle); second-round
        members once the first round is done."""
        todo = [p for p in self.plans if p.folds_done < p.cfg.folds]
        return min(todo, key=lambda p: (not p.resumed, p.second_round, p.epochs < p.max_epochs), default=None)

    def start(self, plan: ModelPlan) -> None:
        plan.resumed = True   # from now on its run is to be finished: never left out

    def observe(self, plan: ModelPlan, seconds: float, *, epochs: float | None = None,
                setup_s: float | None = None) -> None:
        """A fold of `plan` was trained in `seconds` (its first fold with the setup: a frozen trunk's features).
        `epochs`: those it trained, when the time limit cut it short; a cut fold is as fast as the epochs it
        ran, not a sign of a fast machine (which would then cut the next folds shorter still). `setup_s`: what
        the setup really took, when the fold recorded it: a setup timed wrong (dlib_age's trunk on the real
        data took 1.6x its estimate) says nothing of the epochs' speed, and is not taken for it."""
        setup = 0.0
        if plan.folds_done == 0 and setup_s is None:
            setup = plan.setup_s
        elif plan.folds_done == 0:
            seconds -= setup_s
        plan.timed_s += plan.fold_s(epochs) / plan.speed + setup
        plan.seen_s += seconds
        plan.folds_done += 1
        plan.speed, plan.margin = plan.seen_s / plan.timed_s, self.SEEN_MARGIN

    def fitting(self, plans: list[ModelPlan]) -> list[ModelPlan]:
        """`plans` less those not started that would train fewer than --min-epochs (or their cap) as planned."""
        return [p for p in plans if not too_short(p, self.min_epochs)]

    def fold_budget(self, plan: ModelPlan, left_s: float) -> float:
        """The seconds the next fold of `plan` may take: what is left once the other folds of the members
        started have their estimates. A fold that meets a slow moment can use the slack instead of being cut;
        one that would not fit even so plans fewer epochs at its start (kit/train.py), rather than being cut.
        Members not started yet reserve nothing: they train in what the started ones leave, or wait (seen in
        a 10-minute kernel on a loaded machine: dlib_age, joining, kept its estimate while dlib_face's last
        two folds were cut to 2% of an epoch, and that run's blend fell from 0.83 to 0.68)."""
        others = sum(p.estimate_s() / p.margin for p in self.plans if p is not plan and p.resumed)
        rest_of_plan = (plan.folds_left - 1) * plan.fold_s()
        return left_s - others - rest_of_plan

    def admit(self, kept: list[ModelPlan], available_s: float) -> list[ModelPlan]:
        """`kept` with each waiting plan, in order, that fits in time they do not need: none of them loses
        epochs for it, and one that does not fit keeps no later one out."""
        share_out(kept, available_s)
        for plan in self.waiting:
            had = {id(p): p.epochs for p in kept}
            trial = allot(kept + [plan], available_s, folds=self.folds, max_epochs=self.max_epochs,
                          min_epochs=self.min_epochs)[0]
            if (len(self.fitting(trial)) == len(kept) + 1
                    and all(p.epochs >= had[id(p)] for p in trial if p is not plan)):
                kept = trial
            share_out(kept, available_s)   # the epochs of the set kept, not of the last one tried
        return kept

    def replan(self, available_s: float) -> list[str]:
        """Re-split `available_s` (from now to the deadline, less the reserve) over the folds still to train,
        a started member's too (each fold's length is decided when it starts); returns what changed."""
        before = {p.label: p.epochs for p in self.plans if p.folds_left > 0}
        done = [p for p in self.plans if p.folds_left <= 0]
        current = [p for p in self.plans if p.folds_left > 0]
        open_plans = current + self.waiting
        if len(open_plans) == 1 and open_plans[0].folds_left == 1 and open_plans[0].timed_s:
            # The very last fold needs no margin: at its start it plans the epochs that fit before the
            # deadline (kit/train.py), and a slow moment stops it between batches, never past the limit.
            open_plans[0].margin = 1.0
        # The members in the plan share the time; one waiting (left out, or a spare) joins, in order, only in
        # time they do not need: none of them loses epochs for it. Seen at 30 minutes: a started member at
        # its cap was cut from 7 epochs to 3.9 so that a spare could join; and the first waiting spare not
        # fitting must not keep a cheaper one further down out (5.5 minutes were given back for it).
        kept = self.admit(self.fitting(allot(current, available_s, folds=self.folds, max_epochs=self.max_epochs,
                                             min_epochs=self.min_epochs)[0] if current else []), available_s)
        left_out = [p for p in open_plans if p not in kept]
        self.plans = done + kept
        self.waiting = left_out
        after = {p.label: p.epochs for p in self.plans if p.folds_left > 0}
        changes = [f"{label}: {before[label]:g} -> {epochs:g} epoch(s)" for label, epochs in after.items()
                   if label in before and before[label] != epochs]
        changes += [f"{label}: joins with {epochs:g} epoch(s)" for label, epochs in after.items()
                    if label not in before]
        changes += [f"{label}: left out (no time for it)" for label in before if label not in after]
        if changes:
            timed = [f"{p.label} {1 / p.speed:.2f}x" for p in self.plans if p.timed_s]
            changes.insert(0, f"each member's speed against its own measurement: {', '.join(timed)}")
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
