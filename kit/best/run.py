"""best's plan carried out: the first plan (with its last resort when the time is short), the members' folds
trained one by one (or side by side on --devices workers) and re-planned after each, and what is given back.

    schedule = first_plan(plans, spares, available_s, folds=5, max_epochs=40, min_epochs=4, spent_s=40,
                          time_limit=900)
    results = cross_validate(schedule, members=by_label, deadline=deadline, project=project,
                             timeline=timeline, clock=time.monotonic)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kit.best.plan import ModelPlan, Schedule, allot, with_spares
from kit.config import TrainConfig
from kit.cv import run_cv
from kit.errors import BudgetError
from kit.log import log
from kit.parallel import FoldWorkers
from kit.paths import Project
from kit.rundir import epochs_trained, fold_done_file, setup_seconds
from kit.train import MIN_FOLD_EPOCHS, FoldPlan

BLEND_RESERVE_S = 10   # blending and writing the submission (2-3 s for two members on the real data)


@dataclass
class Timeline:
    """Where the time went, phase by phase."""
    clock: Callable[[], float]
    phases: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str, since: float) -> float:
        now = self.clock()
        self.phases.append((what, now - since))
        return now


def last_resort(measured: list[ModelPlan], available_s: float, *, folds: int, max_epochs: int, min_epochs: int,
                time_limit: float) -> tuple[list[ModelPlan], list[ModelPlan]] | None:
    """When the first member does not get one epoch: the first member that does, alone; failing that, without
    the safety margin, since the wall inside each fold (kit/train.py) stops one that runs late, never past the
    limit; failing that too, part of an epoch per fold of the member that trains the most of one (its
    schedule anneals over the steps that fit). None when not even MIN_FOLD_EPOCHS fit."""
    def alone(plan: ModelPlan, margin: float | None) -> list[ModelPlan]:
        kept_margin, plan.margin = plan.margin, margin or plan.margin
        kept = allot([plan], available_s, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)[0]
        plan.margin = kept_margin
        return kept

    for least, margin in ((1.0, None), (1.0, 1.0), (MIN_FOLD_EPOCHS, 1.0)):
        fitting = [(plan, alone(plan, margin)[0].epochs) for plan in measured]
        fitting = [(plan, epochs) for plan, epochs in fitting if epochs >= least]
        if not fitting:
            continue
        # The first that fits (members come before spares); of parts of an epoch, the largest (the first of equals).
        chosen = fitting[0][0] if least >= 1 else max(fitting, key=lambda pair: pair[1])[0]
        chosen.margin = margin or chosen.margin   # only the chosen one goes bare
        kept = alone(chosen, None)
        log(f"plan: only {chosen.label} fits in --time-limit {time_limit / 60:.1f}m"
            + (" (with no safety margin: a fold that runs late is stopped by the limit)" if margin else "")
            + (f", {chosen.epochs:g} of an epoch per fold" if chosen.epochs < 1 else ""))
        return kept, [p for p in measured if p is not chosen]
    return None


def first_plan(plans: list[ModelPlan], spares: list[ModelPlan], available_s: float, *, folds: int, max_epochs: int,
               min_epochs: int, spent_s: float, time_limit: float) -> Schedule:
    """The members share the time; a spare joins, in order, only in time they do not need, as in every re-plan
    (the members sharing it with the spares, a 30-minute plan gave dlib_face 6.6 of its 7 epochs until the
    first re-plan took them back)."""
    measured = plans + spares
    # A spare joins without taking epochs from a member: kept[0]'s are allot's own.
    kept, waiting = with_spares(plans, spares, available_s, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)
    finished = [p for p in measured if p.folds_left <= 0]   # by an earlier command: a blend is there already
    if kept[0].epochs < 1 and not finished:
        fallback = last_resort(measured, available_s, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs,
                               time_limit=time_limit)
        if fallback is None:
            need = min(folds * (MIN_FOLD_EPOCHS * p.epoch_s + p.fixed_s) + p.setup_s for p in measured) \
                + spent_s + BLEND_RESERVE_S
            raise BudgetError(f"--time-limit {time_limit / 60:.1f}m is too short: the least that makes a "
                              f"submission, {MIN_FOLD_EPOCHS:g} of an epoch on each of {folds} folds of the fastest "
                              f"model, needs about {need / 60:.1f} min here. Give more time, fewer --folds or a "
                              "smaller --size.")
        kept, waiting = fallback
    for plan in waiting:
        if plan not in spares:
            log(f"plan: {plan.label} left out for now: with it, a member would get fewer than {min_epochs} "
                f"epoch(s) per fold; it joins if the time turns out to be there")
    for plan in kept:
        log(f"plan: {plan.label}: {plan.train_images_per_s:.0f} train / {plan.infer_images_per_s:.0f} infer "
            f"img/s -> {plan.epochs:g} epoch(s) x {folds} folds, about {plan.estimate_s() / 60:.1f} of "
            f"{plan.share_s / 60:.1f} min" + (" (resumed run: its planned epochs kept)" if plan.resumed else ""))
    return Schedule(kept, waiting, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)


def cross_validate(schedule: Schedule, *, members: dict, deadline: float, project: Project,
                   timeline: Timeline, clock: Callable[[], float]) -> list:
    """Train the schedule's members fold by fold, re-planning after every fold; returns their results.
    `members`: label -> kit.best.Member (a second-round member learns from the first round's folds).
    With --devices (by default on GPUs) the folds go to workers that live for the whole command: each starts
    once and computes a member's frozen trunk once, whichever of its folds it trains (kit/parallel.py)."""
    with FoldWorkers(project.root) as fold_workers:
        return train_members(schedule, members=members, deadline=deadline, project=project, timeline=timeline,
                             clock=clock, fold_workers=fold_workers)


def train_members(schedule: Schedule, *, members: dict, deadline: float, project: Project, timeline: Timeline,
                  clock: Callable[[], float], fold_workers: FoldWorkers) -> list:
    results = []
    for plan in schedule.plans:
        if plan.folds_done == plan.cfg.folds:   # finished by an earlier command
            plan.cfg = dataclasses.replace(plan.cfg, epochs=plan.run_epochs)
            results.append(run_cv(plan.cfg, root=project.root, clock=clock))
            plan.trained = trained_per_fold(plan, results[-1].run_dir)
    while (plan := schedule.next_plan()) is not None:
        if deadline - clock() - BLEND_RESERVE_S <= 0:
            break
        schedule.start(plan)
        # The run's --epochs is the member's cap; each fold trains what the plan gives it when it starts.
        plan.cfg = dataclasses.replace(plan.cfg, epochs=plan.run_epochs or plan.max_epochs)
        if members[plan.label].pseudo:   # the first round is done by now: fold k learns from its fold-k models
            first_round = [f"{r.run_dir.parent.name}/{r.run_dir.name}" for r in results if r.complete]
            plan.cfg = dataclasses.replace(plan.cfg, pseudo_labels=first_round)
        run_started = clock()
        result = train_member_folds(schedule, plan, deadline=deadline, project=project, clock=clock,
                                    fold_workers=fold_workers)
        if result is None:
            timeline.mark(f"cv {plan.label} (unfinished)", run_started)
            break
        plan.trained = trained_per_fold(plan, result.run_dir)
        epochs = "/".join(f"{round(e, 2):g}" for e in plan.trained)
        timeline.mark(f"cv {plan.label} ({epochs} epochs in its folds)", run_started)
        results.append(result)
    left_s = deadline - clock() - BLEND_RESERVE_S
    if left_s > 60:
        why = (waiting_reasons(schedule, left_s) if schedule.waiting else
               "every member trained to its epoch cap (past it, it overfits: kit/best/members.py EPOCH_CAPS) "
               "and no spare is waiting (--spares)")
        log(f"{left_s / 60:.1f} min of the limit are given back: {why}")
    return results


def waiting_reasons(schedule: Schedule, left_s: float) -> str:
    """Why each waiting member does not use the time left: what it would train in it, alone."""
    reasons = []
    for plan in schedule.waiting:
        alone = allot([plan], left_s, folds=schedule.folds, max_epochs=schedule.max_epochs,
                      min_epochs=schedule.min_epochs)[0][0]
        reasons.append(f"{plan.label} would train {alone.epochs:g} of its {plan.max_epochs:g} epochs per fold in it, "
                       f"fewer than --min-epochs {schedule.min_epochs}")
    return "; ".join(reasons)


def trained_per_fold(plan: ModelPlan, run_dir: Path) -> list[float]:
    return [epochs_trained(run_dir, fold, plan.cfg.epochs) for fold in range(plan.cfg.folds)]


def lanes(cfg: TrainConfig) -> int:
    """Folds trained side by side: one per --devices worker (by default one per GPU).
    The plan counts in worker-seconds: the wall time left times the lanes."""
    return max(1, len(cfg.devices or []))


def train_member_folds(schedule: Schedule, plan: ModelPlan, *, deadline: float, project: Project,
                       clock: Callable[[], float], fold_workers: FoldWorkers | None = None):
    """Train a started member's folds, each with the time its budget gives it, one at a time or, with --devices,
    one per worker (of `fold_workers`) side by side; re-plan after each fold or group of folds. None when the
    deadline leaves no room for the next fold (its last epoch and predictions included): the member stays
    unfinished, to be resumed by rerunning the command, and the blend uses the others."""
    devices, width = plan.cfg.devices or [], lanes(plan.cfg)
    run_dir = project.run_dir(plan.cfg.model, plan.cfg.name)
    result, folds = None, list(range(plan.cfg.folds))
    while folds:
        group = [folds.pop(0)]
        trained_before = fold_done_file(run_dir, group[0]).is_file()
        while not trained_before and folds and len(group) < width and not fold_done_file(run_dir, folds[0]).is_file():
            group.append(folds.pop(0))
        shown = f"fold {group[0]}" if len(group) == 1 else f"folds {', '.join(map(str, group))} side by side"
        # The group's folds run at once, one per worker: what the plan leaves the first, in worker-seconds,
        # and the planned time of the others, spread over the workers (width 1: the fold's own budget).
        budget = (schedule.fold_budget(plan, (deadline - clock() - BLEND_RESERVE_S) * width)
                  + (len(group) - 1) * plan.fold_s()) / width
        setup_s = plan.setup_s * plan.speed if plan.folds_done == 0 else 0.0
        # A fold gets at least half of what its plan gave the others (of one epoch at most): a fold much
        # shorter than its member's others would drag the member's blend down instead of lifting it.
        least = max(MIN_FOLD_EPOCHS, min(1.0, plan.epochs) / 2)
        if not trained_before and budget < plan.fold_s(least) + setup_s:
            log(f"{plan.label}: no time left for {shown} (it needs about {plan.fold_s(least) / 60:.1f} min for "
                f"{least:g} epoch and its predictions, {max(budget, 0) / 60:.1f} min are left); stopping here")
            return None
        fold_started = clock()
        fold_epochs = max(MIN_FOLD_EPOCHS, plan.epochs)
        if not trained_before:
            log(f"{plan.label} {shown}: {fold_epochs:g} epoch(s), at most {budget / 60:.1f} min")
        result = run_cv(dataclasses.replace(plan.cfg, only_folds=group, time_limit=max(1.0, budget),
                                            devices=devices[:len(group)] or None),
                        root=project.root, clock=clock, fold_workers=fold_workers,
                        fold_plan=FoldPlan(fold_epochs, plan.epoch_s * plan.speed,
                                           plan.speed / plan.infer_images_per_s))
        if trained_before:
            continue
        seconds = clock() - fold_started
        # A worker computes a member's setup (a frozen trunk's features) on its first fold of it (again if it was
        # restarted): not the epochs' speed.
        for fold in group:
            setup = setup_seconds(result.run_dir, fold)
            schedule.observe(plan, seconds - (setup or 0.0) if plan.folds_done and devices else seconds,
                             epochs=epochs_trained(result.run_dir, fold, plan.cfg.epochs), setup_s=setup)
        for change in schedule.replan((deadline - clock() - BLEND_RESERVE_S) * width):
            log(f"re-plan after {plan.label} {shown}: {change}")
    return result
