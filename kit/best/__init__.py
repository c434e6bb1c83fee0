"""Spend a wall-time budget on the best submission it can buy: plan, cross-validate, blend.

    ./run.sh best --time-limit 60m --data ../shared/data/utkface-age-gender.zip

1. members: each --models entry with its recipe and options (kit/best/members.py); a model whose
   pretrained weights cannot be had here trains from random init and says so (unless --pretrained);
2. prepare: validate and decode the data (cached after the first time) and make the folds;
3. measure: time a few training and inference batches of each member through the very steps cv runs
   (kit/throughput.py), on this machine, now; with --precision auto on a CPU with native bf16, in fp32
   and bf16 both, and train in the faster;
4. plan: split the time left among the members (--shares) and give each the largest number of epochs
   per fold whose estimated cost fits its share (kit/best/plan.py). A model capped below what its share
   buys (EPOCH_CAPS: past it, it overfits) gives the rest to the others. While a member would get fewer
   than --min-epochs, the last of --models is left out and its time goes to the rest;
5. cross-validate each member (kit.cv.run_cv) under its own deadline: should the estimate be wrong, cv
   stops before an epoch that would overrun and keeps the best checkpoint;
6. blend the runs (kit.ensemble) into a validated submissions/<name>.csv and say where the time went.

Rerunning the same command resumes: finished folds are kept and an existing run keeps the epochs and
precision it was planned with.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kit.best.members import DEFAULT_MODELS, EPOCH_CAPS, member_config, parse_model_spec
from kit.best.plan import SAFETY, ModelPlan, allot, epoch_costs, parse_shares
from kit.config import TrainConfig
from kit.cv import check_weights, run_cv
from kit.data import load_competition, locate
from kit.device import cpu_has_native_bf16, pick_device
from kit.ensemble import blend, check_output, table, write_submission
from kit.errors import BudgetError, ConfigError, WeightsError
from kit.files import read_json
from kit.folds import folds_for
from kit.log import log
from kit.notebook import publish_submission
from kit.options import add_config_arguments, config_from_args, given_fields, parse_duration
from kit.paths import Project
from kit.rundir import fold_done_file, load_run

BLEND_RESERVE_S = 30   # blending and writing the submission


@dataclass
class Member:
    label: str             # the --models entry
    model: str
    overrides: dict
    cfg: TrainConfig


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
    runs = [(m.cfg.model, m.cfg.name) for m in members]
    if len(set(runs)) < len(runs):
        raise ConfigError(f"--models {','.join(models)}: a model is listed twice with the same options; give each "
                          "entry its own, e.g. dlib_age,dlib_age:lr_backbone=5e-4")
    return members


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
            log(f"{member.label}: pretrained weights unavailable ({str(err).splitlines()[0]}); it trains from "
                "random init (--pretrained insists on them)")
            member.cfg = member_config(dataclasses.replace(cfg, pretrained=False), member.model, member.overrides,
                                       given=given, name=name, sample=sample)


def measure_throughput(cfg: TrainConfig, comp, images, *, is_sample: bool, steps: int, choose_precision: bool = True,
                       label: str | None = None) -> tuple[TrainConfig, dict]:
    """Training and inference images/s of `cfg` here, now, through the very steps cv runs.

    With --precision auto on a CPU with native bf16 (and `choose_precision`), fp32 and bf16 are both
    timed and the faster one is written into the returned config: native bf16 is no promise of speed.
    Measured on 2-core machines, both with AVX512-BF16, resnet18 trained 1.6x faster in bf16 on an AMD
    EPYC and 0.88x as fast on an Intel Xeon."""
    from kit.throughput import KitSteps

    resolved = cfg.resolved(sample=is_sample)
    choices = [cfg.precision]
    if choose_precision and cfg.precision == "auto" and pick_device(cfg.device).type == "cpu" and cpu_has_native_bf16():
        choices = ["fp32", "bf16"]
    train = comp.train
    figures = {precision: KitSteps(dataclasses.replace(resolved, precision=precision), images,
                                   train["cache_index"].to_numpy(), train["age"].to_numpy(),
                                   train["gender"].to_numpy()).measure(steps=steps, warmup=3)
               for precision in choices}
    if len(choices) == 1:
        return cfg, figures[cfg.precision]
    fastest = max(choices, key=lambda precision: figures[precision]["train"])
    log(f"measure: {label or cfg.model}: " + " / ".join(f"{p} {figures[p]['train']:.0f}" for p in choices)
        + f" train img/s -> --precision {fastest}")
    return dataclasses.replace(cfg, precision=fastest), figures[fastest]


def measure_members(members: list[Member], shares: list[float], *, cfg: TrainConfig, comp, images, project: Project,
                    given: set[str], is_sample: bool, max_epochs: int, measure_steps: int) -> list[ModelPlan]:
    plans = []
    for member, share in zip(members, shares):
        member_cfg = dataclasses.replace(member.cfg, overwrite=False)
        saved = project.run_dir(member_cfg.model, member_cfg.name) / "config.json"
        started_with = read_json(saved)["train"] if saved.is_file() else None
        if started_with and "precision" not in given:  # resume as it started (cv refuses a changed config)
            member_cfg = dataclasses.replace(member_cfg, precision=started_with["precision"])
        member_images = images
        if member_cfg.size != cfg.size:  # a member at its own size is timed on images of that size
            member_images = load_competition(cfg.data, project_root=project.root, size=member_cfg.size,
                                             drop_bad_rows=cfg.drop_bad_rows)[1]
        member_cfg, figures = measure_throughput(member_cfg, comp, member_images, is_sample=is_sample,
                                                 label=member.label, steps=measure_steps,
                                                 choose_precision=not started_with)
        epoch_s, fixed_s = epoch_costs(member_cfg.resolved(sample=is_sample), n_train=len(comp.train),
                                       n_test=len(comp.test), train_ips=figures["train"], infer_ips=figures["infer"])
        plan = ModelPlan(member_cfg, 0.0, figures["train"], figures["infer"], epoch_s, fixed_s, 0, share=share,
                         max_epochs=EPOCH_CAPS.get(member_cfg.model, max_epochs), label=member.label)
        if started_with:
            plan.epochs, plan.resumed = int(started_with["epochs"]), True
        plans.append(plan)
    return plans


def plan_members(plans: list[ModelPlan], available_s: float, *, folds: int, max_epochs: int, min_epochs: int,
                 spent_s: float, time_limit: float) -> list[ModelPlan]:
    measured = list(plans)
    plans, left_out = allot(plans, available_s, folds=folds, max_epochs=max_epochs, min_epochs=min_epochs)
    if plans[0].epochs < 1:
        need = min(folds * (p.epoch_s + p.fixed_s) * SAFETY for p in measured) + spent_s + BLEND_RESERVE_S
        raise BudgetError(f"--time-limit {time_limit / 60:.1f}m is too short: one epoch on {folds} folds of the "
                          f"fastest model needs about {need / 60:.1f} min here. Give more time, fewer --folds or "
                          "a smaller --size.")
    for plan in left_out:
        log(f"plan: {plan.label} left out: with it, each model would get fewer than {min_epochs} epoch(s) "
            f"per fold; its time goes to {', '.join(p.label for p in plans)}")
    for plan in plans:
        plan.cfg = dataclasses.replace(plan.cfg, epochs=plan.epochs)
        log(f"plan: {plan.label}: {plan.train_images_per_s:.0f} train / {plan.infer_images_per_s:.0f} infer "
            f"img/s -> {plan.epochs} epoch(s) x {folds} folds, about {plan.estimate_s() / 60:.1f} of "
            f"{plan.share_s / 60:.1f} min" + (" (resumed run: its planned epochs kept)" if plan.resumed else ""))
    return plans


def cross_validate(plans: list[ModelPlan], *, deadline: float, project: Project, timeline: Timeline,
                   clock: Callable[[], float]) -> list:
    results = []
    for position, plan in enumerate(plans):
        # Each model may use what is left of the budget by the time it starts, in proportion to its share.
        left = deadline - clock() - BLEND_RESERVE_S
        later = sum(p.share_s for p in plans[position:])
        cfg_now = dataclasses.replace(plan.cfg, time_limit=max(1.0, left * plan.share_s / later))
        run_started = clock()
        result = run_cv(cfg_now, root=project.root, clock=clock)
        timeline.mark(f"cv {plan.label} ({plan.epochs} epochs x {plan.cfg.folds} folds)", run_started)
        cut = [f for f in range(plan.cfg.folds) if fold_done_file(result.run_dir, f).is_file()
               and read_json(fold_done_file(result.run_dir, f)).get("cut_at_epoch") is not None]
        if cut:
            log(f"{plan.label}: the time limit cut training short in fold(s) {cut} (best checkpoints kept)")
        results.append(result)
    return results


def best(cfg: TrainConfig, *, time_limit: float, models: list[str], shares: list[float] | None = None,
         given: set[str] | None = None, name: str | None = None, max_epochs: int = 40, min_epochs: int = 4,
         root: Path | None = None, overwrite: bool = False, measure_steps: int = 12,
         clock: Callable[[], float] = time.monotonic) -> dict:
    """Cross-validate `models` and blend them into a submission, all within `time_limit` seconds.

    `given`: the fields the user chose, which the recipes leave alone (default: those that differ
    from TrainConfig's defaults)."""
    started = clock()
    deadline = started + time_limit
    timeline = Timeline(clock)
    project = Project.at(root)
    shares = shares or [1.0] * len(models)
    if given is None:
        given = {k for k, v in dataclasses.asdict(cfg).items() if v != getattr(TrainConfig(), k)}
    folder, competition, is_sample = locate(cfg.data, project_root=project.root)
    name = name or f"best-{competition}-{int(time_limit // 60)}m"
    members = member_specs(cfg, models, given=given, name=name, sample=is_sample)
    out = project.submissions / f"{name}.csv"
    check_output(out, overwrite=overwrite)
    with_reachable_weights(members, cfg, given=given, name=name, sample=is_sample)

    comp, train_images, _ = load_competition(cfg.data, project_root=project.root, size=cfg.size,
                                             drop_bad_rows=cfg.drop_bad_rows)
    folds_for(comp.train, competition=comp.name, k=cfg.folds, seed=cfg.fold_seed, folds_dir=project.folds)
    now = timeline.mark("prepare data and folds", started)

    plans = measure_members(members, shares, cfg=cfg, comp=comp, images=train_images, project=project, given=given,
                            is_sample=is_sample, max_epochs=max_epochs, measure_steps=measure_steps)
    now = timeline.mark("measure throughput", now)
    plans = plan_members(plans, deadline - now - BLEND_RESERVE_S, folds=cfg.folds, max_epochs=max_epochs,
                         min_epochs=min_epochs, spent_s=now - started, time_limit=time_limit)
    results = cross_validate(plans, deadline=deadline, project=project, timeline=timeline, clock=clock)

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
    log(f"wrote {out} ({sidecar['rows']} rows); cross-validated {blended.cv}")
    log(f"where the time went ({total / 60:.1f} of {time_limit / 60:.1f} min):")
    for what, seconds in timeline.phases:
        log(f"  {what:<44} {seconds / 60:6.1f} min")
    return {"submission": str(out), "cv": blended.cv.as_dict(), "seconds": total, "time_limit": time_limit,
            "members": {f"{r.run_dir.parent.name}/{r.run_dir.name}": r.scores.as_dict() for r in complete},
            "epochs": {p.label: p.epochs for p in plans}, "timeline": timeline.phases,
            "plans": [(p.label, p.estimate_s(), p.share_s) for p in plans]}


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit best", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-limit", type=parse_duration, required=True, help="wall-time budget, e.g. 60m")
    parser.add_argument("--models", "--model", dest="models", default=DEFAULT_MODELS,
                        help=f"comma-separated members (default: {DEFAULT_MODELS}); MODEL:FIELD=VALUE[:...] trains "
                             "a member with its own options")
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
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.epochs is not None:
        raise ConfigError("--epochs is planned from the time limit here; use --max-epochs to cap it")
    if not args.time_limit > 0:
        raise ConfigError(f"--time-limit {args.time_limit}: must be a positive duration, e.g. 60m")
    if args.max_epochs < 1 or args.min_epochs < 1:
        raise ConfigError("--max-epochs and --min-epochs must be at least 1")
    best(config_from_args(args), time_limit=args.time_limit, models=models, shares=parse_shares(args.shares, models),
         given=set(given_fields(args)), name=args.name, max_epochs=args.max_epochs, min_epochs=args.min_epochs,
         overwrite=args.overwrite)
    return 0
