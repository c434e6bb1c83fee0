"""Timing the members before the plan: images per second of each, through the very steps cv runs."""
from __future__ import annotations

import dataclasses

from kit.best.plan import ModelPlan, epoch_costs
from kit.config import TrainConfig
from kit.data import load_competition
from kit.device import cpu_has_native_bf16, pick_device
from kit.files import read_json
from kit.log import log
from kit.parallel import worker_configs
from kit.paths import Project
from kit.rundir import fold_done_file

# Fields that change what a step computes but not how long it takes: members differing only in these
# share one measurement (a second seed of a model is not timed again).
SPEED_NEUTRAL = ("name", "seed", "lr_head", "lr_backbone", "unfreeze_epoch", "weight_decay", "schedule",
                 "warmup_epochs", "age_loss_weight", "age_loss", "label_smoothing", "pseudo_labels", "pseudo_weight",
                 "epochs", "tta", "optimizer")


def measure_throughput(cfg: TrainConfig, comp, images, *, is_sample: bool, steps: int, choose_precision: bool = True,
                       label: str | None = None) -> tuple[TrainConfig, dict]:
    """Training and inference images/s of `cfg` here, now, through the very steps cv runs.

    With --precision auto on a CPU with native bf16 (and `choose_precision`), fp32 and bf16 are both
    timed and the faster one is written into the returned config: native bf16 is no promise of speed.
    Measured on 2-core machines, both with AVX512-BF16, resnet18 trained 1.6x faster in bf16 on an AMD
    EPYC and 0.88x as fast on an Intel Xeon."""
    from kit.throughput import KitSteps

    resolved = cfg.resolved(sample=is_sample)
    if cfg.devices:   # timed as one of its --devices workers trains: on such a device, with its share of the cores
        resolved = worker_configs(resolved, cfg.devices)[0]
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


def speed_key(cfg: TrainConfig) -> tuple:
    return tuple((k, str(v)) for k, v in dataclasses.asdict(cfg).items() if k not in SPEED_NEUTRAL)


def measure_members(members: list, shares: list[float], *, cfg: TrainConfig, comp, images, project: Project,
                    given: set[str], is_sample: bool, max_epochs: int, measure_steps: int,
                    caps: dict[str, int], measured: dict | None = None) -> list[ModelPlan]:
    """A plan per member, with its measured speed; a member whose run exists keeps its epochs and
    precision, and counts its finished folds. `measured` (speed key -> precision and figures) carries the
    timings over from an earlier call: a spare that differs from a member only by its seed is not timed again."""
    plans, measured = [], {} if measured is None else measured
    for member, share in zip(members, shares):
        member_cfg = dataclasses.replace(member.cfg, overwrite=False)
        saved = project.run_dir(member_cfg.model, member_cfg.name) / "config.json"
        started_with = read_json(saved)["train"] if saved.is_file() else None
        if started_with and "precision" not in given:  # resume as it started (cv refuses a changed config)
            member_cfg = dataclasses.replace(member_cfg, precision=started_with["precision"])
        key = speed_key(member_cfg)
        if key in measured:
            member_cfg, figures = dataclasses.replace(member_cfg, precision=measured[key][0]), measured[key][1]
        else:
            member_images = images
            if member_cfg.size != cfg.size:  # a member at its own size is timed on images of that size
                member_images = load_competition(cfg.data, project_root=project.root, size=member_cfg.size,
                                                 drop_bad_rows=cfg.drop_bad_rows)[1]
            member_cfg, figures = measure_throughput(member_cfg, comp, member_images, is_sample=is_sample,
                                                     label=member.label, steps=measure_steps,
                                                     choose_precision=not started_with)
            measured[key] = (member_cfg.precision, figures)
        # A pseudo-labelled member also learns from every test image: that much more to train per epoch.
        extra = len(comp.test) if member.pseudo else 0
        epoch_s, fixed_s = epoch_costs(member_cfg.resolved(sample=is_sample), n_train=len(comp.train),
                                       n_test=len(comp.test), train_ips=figures["train"], infer_ips=figures["infer"],
                                       extra_train=extra)
        plan = ModelPlan(member_cfg, 0.0, figures["train"], figures["infer"], epoch_s, fixed_s, 0, share=share,
                         max_epochs=caps.get(member_cfg.model, max_epochs), label=member.label,
                         setup_s=(len(comp.train) + len(comp.test)) / figures["trunk"] if "trunk" in figures else 0.0,
                         second_round=member.pseudo)
        if started_with:   # its folds may train fewer epochs than its run's --epochs, never more
            plan.run_epochs, plan.resumed = int(started_with["epochs"]), True
            plan.max_epochs = min(plan.max_epochs, plan.run_epochs)
            run_dir = project.run_dir(member_cfg.model, member_cfg.name)
            plan.folds_done = sum(fold_done_file(run_dir, k).is_file() for k in range(member_cfg.folds))
        plans.append(plan)
    return plans
