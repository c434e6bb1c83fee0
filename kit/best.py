"""Spend a wall-time budget on the best submission it can buy: plan, cross-validate, blend.

    ./run.sh best --time-limit 60m --data ../shared/data/utkface-age-gender.zip

1. prepare: validate and decode the data (cached after the first time) and make the folds;
2. measure: time a few training and inference batches of each model through the kit's own data
   path (kit.bench.kit_throughput), on this machine, now; with --precision auto on a CPU with native
   bf16, in fp32 and bf16 both, and train in the faster;
3. plan: split the time left among the models (--shares) and give each the largest number of
   epochs per fold whose estimated cost fits its share: training, scoring the held-out fold after
   every epoch, and the final held-out and test predictions, times a safety margin. A model capped
   below what its share buys (EPOCH_CAPS: past it, it overfits) gives the rest to the others. While a
   model would get fewer than --min-epochs, the last of --models is left out and its time goes to the rest;
4. cross-validate each model (kit.cv.run_cv) under its own deadline: should the estimate be
   wrong, cv stops before an epoch that would overrun and keeps the best checkpoint;
5. blend the runs (kit.ensemble) into a validated submissions/<name>.csv and say where the time went.

Each model starts from its RECIPE (measured by cross-validation here, see the README's ablation
table); explicit options override it, and `--models MODEL:FIELD=VALUE` overrides it for one member.
Rerunning the same command resumes: finished folds are kept and an existing run keeps the epochs it
was planned with.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kit.config import (TrainConfig, UserError, add_train_arguments, check_config, config_from_args, parse_duration,
                        read_json_option)
from kit.files import read_json

# Measured on the real data from random init (README, "What single changes did"): one-cycle beat the
# constant rate by +0.034 to +0.045 on a fold (the tuning study); for resnet18 over 4 epochs, MSE on age
# beat L1 by +0.006, no augmentation beat strong by +0.033 (4 epochs are too few to overfit) and age
# bins beat regression by +0.009. Over 12 epochs (3 folds) no augmentation overfits (training loss
# 0.27): flips alone scored +0.007 over none, light augmentation the same as flips; 7 epochs of 5 folds
# with flips, what an hour buys in fp32 here, scored as well. The scratch CNN keeps its measured
# 7-epoch full run's recipe.
RECIPES = {
    "resnet18": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", lr_backbone=2e-3,
                     augment="flip", age_loss="mse", age_target="bins", tta=True),
    "scratch": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", lr_backbone=3e-3,
                    augment="light", tta=True),
    # dlib's pretrained age network: its learning rates are config.PRETRAINED_DEFAULTS'.
    "dlib_age": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment="flip", age_loss="mse",
                     age_target="bins", tta=True),
}
# Epochs past which a model's held-out score falls (fold 0 of the real data, README): dlib_age scored
# 0.8322 with 6 epochs and 0.8277 with 10 (training loss 0.33: it overfits). Time a capped model does
# not need goes to the other models.
EPOCH_CAPS = {"dlib_age": 6}
# Two fine-tunings of dlib's age network, at 2.5e-4 (its default) and 1e-3: on fold 0 they scored
# 0.8343 and 0.8322 alone and 0.8376 averaged (a third, at 5e-4, added nothing: 0.8367); a CPU hour
# here buys both with time to spare (resnet18 from random init scored 0.818 with the whole hour).
DEFAULT_MODELS = "dlib_age,dlib_age:lr_backbone=1e-3"
LEARNING_RATE_FIELDS = ("lr_head", "lr_backbone", "unfreeze_epoch")
SAFETY = 1.15          # sustained training can run slower than the timed bursts: the 5 folds of two 60-minute
                       # runs here took 0.99 and 1.15 of their estimates without the margin
BLEND_RESERVE_S = 30   # blending and writing the submission


class BudgetError(UserError):
    pass


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
    resumed: bool = False
    max_epochs: int = 40           # --max-epochs, or the model's EPOCH_CAPS entry if lower

    def estimate_s(self) -> float:
        return self.cfg.folds * (self.epochs * self.epoch_s + self.fixed_s) * SAFETY


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """'dlib_age' or 'dlib_age:lr_backbone=5e-4:size=80' -> ('dlib_age', {'lr_backbone': 0.0005, 'size': 80}).

    Options after the model name override its recipe for that member only, so one model can join the
    blend twice, differently trained."""
    model, *options = spec.split(":")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "name", "data", "folds", "seed",
                                                                  "only_folds", "epochs", "time_limit", "overwrite"}
    overrides = {}
    for option in options:
        field, equals, text = option.partition("=")
        if not equals or field not in known:
            raise UserError(f"--models {spec!r}: {option!r} is not FIELD=VALUE with a per-model training field "
                            f"({', '.join(sorted(known))})")
        value: object = {"true": True, "false": False}.get(text.lower(), text)
        for cast in (int, float):
            try:
                value = cast(text)
                break
            except ValueError:
                pass
        overrides[field] = value
    return model.strip(), overrides


def member_name(name: str, overrides: dict) -> str:
    """The run name of a blend member: the submission's name, plus its overrides if it has any."""
    return "-".join([name, *(f"{field}{value}" for field, value in overrides.items())])


def recipe_config(cfg: TrainConfig, model: str, given: set[str], *, sample: bool = False) -> TrainConfig:
    """`cfg` for `model` with the model's recipe filled in where the user gave nothing.

    The recipe's learning rates were measured from random init; from pretrained weights the
    pretrained defaults (TrainConfig.resolved) apply instead."""
    recipe = dict(RECIPES.get(model, {}))
    resolved = dataclasses.replace(cfg, model=model).resolved(sample=sample)
    if resolved.starts_pretrained():
        recipe = {k: v for k, v in recipe.items() if k not in LEARNING_RATE_FIELDS}
    return dataclasses.replace(cfg, model=model, **{k: v for k, v in recipe.items() if k not in given})


def epoch_costs(cfg: TrainConfig, *, n_train: int, n_test: int, train_ips: float, infer_ips: float) -> tuple[float, float]:
    """(seconds of one epoch of one fold, seconds per fold outside the epochs), from measured images/s.

    Epochs are scored on one view of the held-out rows; the final predictions add the flips (--tta)."""
    views = 2 if cfg.tta else 1
    n_valid = n_train / cfg.folds
    epoch = (n_train - n_valid) / train_ips + n_valid / infer_ips
    fixed = (n_valid + n_test) * views / infer_ips
    return epoch, fixed


def plan_epochs(share_s: float, folds: int, epoch_s: float, fixed_s: float, max_epochs: int) -> int:
    """The most epochs per fold (at most max_epochs) whose estimated cost, with the margin, fits share_s."""
    per_fold = share_s / SAFETY / folds - fixed_s
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
                plan.epochs = plan_epochs(plan.share_s, folds, plan.epoch_s, plan.fixed_s, plan.max_epochs)
            if (plan.resumed or plan.epochs == plan.max_epochs) and plan.estimate_s() < plan.share_s:
                fixed[i] = plan.share_s = plan.estimate_s()
                newly_fixed = True
        if not newly_fixed or len(fixed) == len(plans):
            return


def parse_shares(text: str | None, models: list[str]) -> list[float]:
    if not text:
        return [1.0] * len(models)
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--shares {text!r}: expected numbers like 2,1") from None
    if len(shares) != len(models) or any(s <= 0 for s in shares):
        raise UserError(f"--shares {text!r}: need one positive number per model ({', '.join(models)})")
    return shares


def measure_throughput(cfg: TrainConfig, images, rows, *, is_sample: bool, steps: int, choose_precision: bool = True,
                       label: str | None = None, log=print) -> tuple[TrainConfig, dict]:
    """Training and inference images/s of `cfg` here, now, through the kit's own data path.

    With --precision auto on a CPU with native bf16 (and `choose_precision`), fp32 and bf16 are both
    timed and the faster one is written into the returned config: native bf16 is no promise of speed.
    Measured on 2-core machines, both with AVX512-BF16, resnet18 trained 1.6x faster in bf16 on an AMD
    EPYC and 0.88x as fast on an Intel Xeon."""
    from kit.bench import kit_throughput
    from kit.train import cpu_has_native_bf16, inference_batch_size, pick_device

    resolved = cfg.resolved(sample=is_sample)
    choices = [cfg.precision]
    if choose_precision and cfg.precision == "auto" and pick_device(cfg.device).type == "cpu" and cpu_has_native_bf16():
        choices = ["fp32", "bf16"]
    figures = {precision: kit_throughput(dataclasses.replace(resolved, precision=precision), images, rows,
                                         steps=steps, warmup=3,
                                         infer_batch=inference_batch_size(resolved.batch_size))
               for precision in choices}
    if len(choices) == 1:
        return cfg, figures[cfg.precision]
    fastest = max(choices, key=lambda precision: figures[precision]["train"])
    log(f"measure: {label or cfg.model}: " + " / ".join(f"{p} {figures[p]['train']:.0f}" for p in choices)
        + f" train img/s -> --precision {fastest}")
    return dataclasses.replace(cfg, precision=fastest), figures[fastest]


def best(cfg: TrainConfig, *, time_limit: float, models: list[str], shares: list[float] | None = None,
         given: set[str] | None = None, name: str | None = None, max_epochs: int = 40, min_epochs: int = 4,
         root: Path | None = None, overwrite: bool = False, measure_steps: int = 12, log=print) -> dict:
    """Cross-validate `models` and blend them into a submission, all within `time_limit` seconds.

    `given`: the fields the user chose, which the recipes leave alone (default: those that differ
    from TrainConfig's defaults)."""
    started = time.monotonic()
    deadline = started + time_limit
    from kit.cv import project_root, run_cv
    from kit.data import load_competition, locate
    from kit.ensemble import blend, load_run, table, write_submission

    root = Path(root or project_root())
    shares = shares or [1.0] * len(models)
    if given is None:
        given = {k for k, v in dataclasses.asdict(cfg).items() if v != getattr(TrainConfig(), k)}
    specs = [parse_model_spec(spec) for spec in models]
    folder, competition, is_sample = locate(cfg.data, project_root=root)
    name = name or f"best-{competition}-{int(time_limit // 60)}m"

    def member_config(base: TrainConfig, model: str, overrides: dict) -> TrainConfig:
        member = dataclasses.replace(recipe_config(base, model, given | set(overrides), sample=is_sample),
                                     name=member_name(name, overrides), **overrides)
        check_config(member)
        return member

    configs = [member_config(cfg, model, overrides) for model, overrides in specs]
    runs = [(c.model, c.name) for c in configs]
    if len(set(runs)) < len(runs):
        raise UserError(f"--models {','.join(models)}: a model is listed twice with the same options; give each "
                        "entry its own, e.g. dlib_age,dlib_age:lr_backbone=5e-4")
    out = root / "submissions" / f"{name}.csv"
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; choose another --name or pass --overwrite")
    from kit.cv import check_weights
    from kit.models import WeightsError

    for i, (model, overrides) in enumerate(specs):
        try:
            check_weights(configs[i].resolved(sample=is_sample))
        except WeightsError as err:
            # The budget is spent on what can be had here: a model whose pretrained weights are out of
            # reach (offline ImageNet) trains from random init, and says so, unless the user asked for them.
            if "pretrained" in given or "weights" in given:
                raise
            log(f"{models[i]}: pretrained weights unavailable ({str(err).splitlines()[0]}); it trains from random "
                "init (--pretrained insists on them)")
            configs[i] = member_config(dataclasses.replace(cfg, pretrained=False), model, overrides)
    timeline = []

    def mark(what: str, since: float) -> float:
        now = time.monotonic()
        timeline.append((what, now - since))
        return now

    # 1. prepare
    comp, train_images, _ = load_competition(cfg.data, project_root=root, size=cfg.size,
                                             drop_bad_rows=cfg.drop_bad_rows)
    from kit.folds import folds_for

    folds_for(comp.train, competition=comp.name, k=cfg.folds, seed=cfg.seed, folds_dir=root / "folds")
    now = mark("prepare data and folds", started)

    # 2. measure and 3. plan
    plans = []
    rows = comp.train["cache_index"].to_numpy()
    for model_cfg, share, label in zip(configs, shares, models):
        model_cfg = dataclasses.replace(model_cfg, overwrite=False)
        saved = root / "runs" / model_cfg.model / model_cfg.name / "config.json"
        started_with = read_json(saved)["train"] if saved.is_file() else None
        if started_with and "precision" not in given:  # resume as it started (cv refuses a changed config)
            model_cfg = dataclasses.replace(model_cfg, precision=started_with["precision"])
        images = train_images
        if model_cfg.size != cfg.size:  # a member at its own size is timed on images of that size
            images = load_competition(cfg.data, project_root=root, size=model_cfg.size,
                                      drop_bad_rows=cfg.drop_bad_rows)[1]
        model_cfg, figures = measure_throughput(model_cfg, images, rows, is_sample=is_sample, label=label,
                                                steps=measure_steps, choose_precision=not started_with, log=log)
        epoch_s, fixed_s = epoch_costs(model_cfg.resolved(sample=is_sample), n_train=len(comp.train),
                                       n_test=len(comp.test), train_ips=figures["train"], infer_ips=figures["infer"])
        plan = ModelPlan(model_cfg, 0.0, figures["train"], figures["infer"], epoch_s, fixed_s, 0, share=share,
                         max_epochs=EPOCH_CAPS.get(model_cfg.model, max_epochs), label=label)
        if started_with:
            plan.epochs, plan.resumed = int(started_with["epochs"]), True
        plans.append(plan)
    now = mark("measure throughput", now)
    available = deadline - now - BLEND_RESERVE_S
    measured = list(plans)
    plans, left_out = allot(plans, available, folds=cfg.folds, max_epochs=max_epochs, min_epochs=min_epochs)
    if plans[0].epochs < 1:
        need = min(cfg.folds * (p.epoch_s + p.fixed_s) * SAFETY for p in measured) + (now - started) + BLEND_RESERVE_S
        raise BudgetError(f"--time-limit {time_limit / 60:.1f}m is too short: one epoch on {cfg.folds} folds of the "
                          f"fastest model needs about {need / 60:.1f} min here. Give more time, fewer --folds or "
                          "a smaller --size.")
    for plan in left_out:
        log(f"plan: {plan.label} left out: with it, each model would get fewer than {min_epochs} epoch(s) "
            f"per fold; its time goes to {', '.join(p.label for p in plans)}")
    for plan in plans:
        plan.cfg = dataclasses.replace(plan.cfg, epochs=plan.epochs)
        log(f"plan: {plan.label}: {plan.train_images_per_s:.0f} train / {plan.infer_images_per_s:.0f} infer "
            f"img/s -> {plan.epochs} epoch(s) x {cfg.folds} folds, about {plan.estimate_s() / 60:.1f} of "
            f"{plan.share_s / 60:.1f} min" + (" (resumed run: its planned epochs kept)" if plan.resumed else ""))

    # 4. cross-validate
    results = []
    for position, plan in enumerate(plans):
        # Each model may use what is left of the budget by the time it starts, in proportion to its share.
        left = deadline - time.monotonic() - BLEND_RESERVE_S
        later = sum(p.share_s for p in plans[position:])
        cfg_now = dataclasses.replace(plan.cfg, time_limit=max(1.0, left * plan.share_s / later))
        run_started = time.monotonic()
        result = run_cv(cfg_now, root=root, log=log)
        mark(f"cv {plan.label} ({plan.epochs} epochs x {cfg.folds} folds)", run_started)
        cuts = [read_json(result.run_dir / f"fold{f}" / "metrics.json").get("cut_at_epoch")
                for f in range(cfg.folds) if (result.run_dir / f"fold{f}" / "metrics.json").is_file()]
        if any(c is not None for c in cuts):
            log(f"{plan.label}: the time limit cut training short in fold(s) "
                f"{[f for f, c in enumerate(cuts) if c is not None]} (best checkpoints kept)")
        results.append(result)

    # 5. blend
    blend_started = time.monotonic()
    complete = [r for r in results if r.complete]
    if not complete:
        raise BudgetError("no model finished all its folds within the time limit; rerun the same command to "
                          "continue where it stopped")
    runs = [load_run(r.run_dir) for r in complete]
    blended = blend(runs, "auto" if len(runs) > 1 else "equal", sample_path=folder / "sample_submission.csv")
    log(table(blended))
    sidecar = write_submission(blended, out, overwrite=overwrite)
    mark("blend and write the submission", blend_started)
    total = time.monotonic() - started
    log(f"wrote {out} ({sidecar['rows']} rows); cross-validated {blended.cv}")
    log(f"where the time went ({total / 60:.1f} of {time_limit / 60:.1f} min):")
    for what, seconds in timeline:
        log(f"  {what:<44} {seconds / 60:6.1f} min")
    return {"submission": str(out), "cv": blended.cv.as_dict(), "seconds": total, "time_limit": time_limit,
            "members": {f"{r.run_dir.parent.name}/{r.run_dir.name}": r.scores.as_dict() for r in complete},
            "epochs": {p.label: p.epochs for p in plans}, "timeline": timeline}


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    from kit.ensemble import RunError as EnsembleRunError, SubmissionError

    parser = argparse.ArgumentParser(prog="python -m kit best", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-limit", type=parse_duration, required=True, help="wall-time budget, e.g. 60m")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated models (default {DEFAULT_MODELS}); MODEL:FIELD=VALUE[:...] trains a "
                             "member with its own options")
    parser.add_argument("--shares", help="relative time shares of the models, e.g. 2,1 (default equal)")
    parser.add_argument("--name", help="run and submission name (default best-<competition>-<minutes>m)")
    parser.add_argument("--max-epochs", type=int, default=40, help="upper bound on the planned epochs per fold")
    parser.add_argument("--min-epochs", type=int, default=4,
                        help="a model joins the blend only with at least this many epochs per fold; otherwise the "
                             "last of --models is left out and its time goes to the others (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing submission of that name")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if args.epochs is not None:
            raise UserError("--epochs is planned from the time limit here; use --max-epochs to cap it")
        cfg = config_from_args(args)
        given = {f.name for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
        if args.params:  # fields from a --params file count as chosen too (config_from_args checked the file)
            loaded = read_json_option("--params", args.params)
            given |= set(loaded.get("params", loaded))
        best(cfg, time_limit=args.time_limit, models=models, shares=parse_shares(args.shares, models),
             given=given, name=args.name, max_epochs=args.max_epochs, min_epochs=args.min_epochs,
             overwrite=args.overwrite,
             log=lambda text: print(text, flush=True))
    except (UserError, EnsembleRunError, SubmissionError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
