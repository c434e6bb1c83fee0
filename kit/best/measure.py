"""Timing the members before the plan: images per second of each, through the very steps cv runs.

    plans = measure_members(members, shares, cfg=cfg, comp=comp, images=images, project=project, ...)

On a CPU the members are timed in this process. On a GPU one child process times them all (started by
kit/launch.py, as fold workers are, with the GPU it measures on as its only one) and hands the figures
back: this process starts best's fold workers and must make no CUDA context of its own, which would hold
memory on that GPU for the whole command.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from kit.best.plan import ModelPlan, epoch_costs, with_spares
from kit.config import TrainConfig
from kit.data import load_competition
from kit.device import cpu_has_native_bf16, pick_device
from kit.errors import RunError
from kit.files import read_json, write_json
from kit.launch import Worker, gpu_of, run_workers
from kit.log import log, tagged
from kit.parallel import worker_configs
from kit.paths import Project
from kit.processes import die_with_parent, sigterm_raises_terminated
from kit.rundir import fold_done_file

MEASURE_ENV = "FACEKIT_BEST_MEASURE"   # the spec of the child that times the members on a GPU
# Fields that change what a step computes but not how long it takes: members differing only in these
# share one measurement (a second seed of a model is not timed again).
SPEED_NEUTRAL = ("name", "seed", "lr_head", "lr_backbone", "unfreeze_epoch", "weight_decay", "schedule",
                 "warmup_epochs", "age_loss_weight", "age_loss", "label_smoothing", "pseudo_labels", "pseudo_weight",
                 "epochs", "tta", "optimizer")

Timing = tuple[TrainConfig, str, bool]   # a configuration to time, its label, whether to choose its precision


def measure_throughput(cfg: TrainConfig, comp, images, *, is_sample: bool, steps: int, choose_precision: bool = True,
                       label: str | None = None, checkpoint_dir: Path | None = None) -> tuple[TrainConfig, dict]:
    """Training and inference images/s of `cfg` here, now, through the very steps cv runs, and the seconds
    of an epoch's checkpoint writes (into a temporary folder of `checkpoint_dir`).

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
                                   train["gender"].to_numpy()).measure(steps=steps, warmup=3,
                                                                       checkpoint_dir=checkpoint_dir)
               for precision in choices}
    if len(choices) == 1:
        return cfg, figures[cfg.precision]
    fastest = max(choices, key=lambda precision: figures[precision]["train"])
    log(f"measure: {label or cfg.model}: " + " / ".join(f"{p} {figures[p]['train']:.0f}" for p in choices)
        + f" train img/s -> --precision {fastest}")
    return dataclasses.replace(cfg, precision=fastest), figures[fastest]


def speed_key(cfg: TrainConfig) -> tuple:
    return tuple((k, str(v)) for k, v in dataclasses.asdict(cfg).items() if k not in SPEED_NEUTRAL)


def member_images(size: int, *, cfg: TrainConfig, project: Project, images):
    """The train images at `size`: those at hand at cfg.size; a member at its own size is timed on images of
    that size (decoded once, then cached on disk)."""
    if size == cfg.size and images is not None:
        return images
    return load_competition(cfg.data, project_root=project.root, size=size, drop_bad_rows=cfg.drop_bad_rows)[1]


def time_here(todo: list[Timing], *, comp, images_at: Callable, is_sample: bool, steps: int,
              checkpoint_dir: Path) -> list[tuple[str, dict]]:
    """(precision, figures) of each configuration of `todo`, timed in this process."""
    timed = []
    for timed_cfg, label, choose in todo:
        chosen, figures = measure_throughput(timed_cfg, comp, images_at(timed_cfg.size), is_sample=is_sample,
                                             label=label, steps=steps, choose_precision=choose,
                                             checkpoint_dir=checkpoint_dir)
        timed.append((chosen.precision, figures))
    return timed


def measuring_device(cfg: TrainConfig) -> str:
    """The device the members are timed on, as this process names it: the first --devices worker's, or
    --device's (auto resolved: kit/gpus.py reads the GPUs without initialising CUDA here)."""
    return str(pick_device((cfg.devices or [cfg.device])[0]))


def time_configs(todo: list[Timing], *, cfg: TrainConfig, comp, images, project: Project, is_sample: bool,
                 steps: int) -> list[tuple[str, dict]]:
    """(precision, figures) of each configuration of `todo`: in a child process on a GPU (see above); in
    this one on a CPU, where there is no context to keep out and a second start of torch would cost time."""
    if not todo:
        return []
    device = measuring_device(cfg)
    if device.startswith("cuda"):
        return time_in_child(todo, cfg=cfg, device=device, project=project, is_sample=is_sample, steps=steps)
    images_at = functools.partial(member_images, cfg=cfg, project=project, images=images)
    return time_here(todo, comp=comp, images_at=images_at, is_sample=is_sample, steps=steps,
                     checkpoint_dir=project.cache)


def as_the_child_sees(cfg: TrainConfig) -> TrainConfig:
    """The child sees its GPU alone, as cuda (a --devices config is made so by worker_configs already)."""
    return cfg if cfg.devices else dataclasses.replace(cfg, device="cuda")


def time_in_child(todo: list[Timing], *, cfg: TrainConfig, device: str, project: Project, is_sample: bool,
                  steps: int) -> list[tuple[str, dict]]:
    """Time `todo` in one child process on `device`, which writes (precision, figures) to a file read here."""
    with tempfile.TemporaryDirectory(prefix="facekit-measure-") as folder:
        out = Path(folder) / "figures.json"
        spec = {"cfg": as_the_child_sees(cfg).to_dict(), "root": str(project.root), "is_sample": is_sample,
                "steps": steps, "out": str(out), "parent": os.getpid(),   # it dies with this process
                "todo": [{"cfg": as_the_child_sees(c).to_dict(), "label": label, "choose_precision": choose}
                         for c, label, choose in todo]}
        worker = Worker("kit.best", MEASURE_ENV, spec, gpu=gpu_of(device),
                        label=f"measure: {', '.join(label for _, label, _ in todo)} timed on {device} by a child "
                              "process (this one leaves the GPUs to the workers)")
        code = run_workers([worker])[0]
        if code != 0 or not out.is_file():
            raise RunError(f"timing the members on {device} failed in the child process that measures them "
                           f"(exit code {code}; its message is above)")
        return [(timed["precision"], timed["figures"]) for timed in read_json(out)]


def child_main() -> int:
    """The child of time_in_child (`python -m kit.best` with MEASURE_ENV set): it times, the parent plans."""
    spec = json.loads(os.environ[MEASURE_ENV])
    die_with_parent(spec["parent"])   # a parent killed with -9 takes it along
    with tagged("measure"), sigterm_raises_terminated():
        time_spec(spec)
    return 0


def time_spec(spec: dict) -> None:
    """Time the configurations of a child's spec and write their (precision, figures) to spec["out"]."""
    cfg = TrainConfig.from_dict(spec["cfg"], source="the measuring child's spec")
    project = Project.at(spec["root"])
    comp, images, _ = load_competition(cfg.data, project_root=project.root, size=cfg.size,
                                       drop_bad_rows=cfg.drop_bad_rows, folds=cfg.folds)
    todo = [(TrainConfig.from_dict(t["cfg"], source="the measuring child's spec"), t["label"], t["choose_precision"])
            for t in spec["todo"]]
    images_at = functools.partial(member_images, cfg=cfg, project=project, images=images)
    timed = time_here(todo, comp=comp, images_at=images_at, is_sample=spec["is_sample"], steps=spec["steps"],
                      checkpoint_dir=project.cache)
    write_json(spec["out"], [{"precision": precision, "figures": figures} for precision, figures in timed])


def started_config(member, project: Project, given: set[str]) -> tuple[TrainConfig, dict | None]:
    """The member's config to time, and the config its run started with where an earlier command made it
    (its precision kept unless --precision is given: cv refuses a changed config)."""
    member_cfg = dataclasses.replace(member.cfg, overwrite=False)
    saved = project.run_dir(member_cfg.model, member_cfg.name) / "config.json"
    started_with = read_json(saved)["train"] if saved.is_file() else None
    if started_with and "precision" not in given:
        member_cfg = dataclasses.replace(member_cfg, precision=started_with["precision"])
    return member_cfg, started_with


def measure_members(members: list, shares: list[float], *, cfg: TrainConfig, comp, images, project: Project,
                    given: set[str], is_sample: bool, max_epochs: int, measure_steps: int,
                    caps: dict[str, int], measured: dict | None = None) -> list[ModelPlan]:
    """A plan per member, with its measured speed; a member whose run exists keeps its epochs and
    precision, and counts its finished folds. `measured` (speed key -> precision and figures) carries the
    timings over from an earlier call: a spare that differs from a member only by its seed is not timed again."""
    measured = {} if measured is None else measured
    starts = [started_config(member, project, given) for member in members]
    todo: dict[tuple, Timing] = {}
    for member, (member_cfg, started_with) in zip(members, starts):
        key = speed_key(member_cfg)
        if key not in measured and key not in todo:
            todo[key] = (member_cfg, member.label, not started_with)
    timed = time_configs(list(todo.values()), cfg=cfg, comp=comp, images=images, project=project,
                         is_sample=is_sample, steps=measure_steps)
    measured.update(zip(todo, timed))
    return [member_plan(member, share, member_cfg, started_with, measured[speed_key(member_cfg)], comp=comp,
                        project=project, is_sample=is_sample, max_epochs=max_epochs, caps=caps)
            for member, share, (member_cfg, started_with) in zip(members, shares, starts)]


def member_plan(member, share: float, member_cfg: TrainConfig, started_with: dict | None,
                timing: tuple[str, dict], *, comp, project: Project, is_sample: bool, max_epochs: int,
                caps: dict[str, int]) -> ModelPlan:
    precision, figures = timing
    member_cfg = dataclasses.replace(member_cfg, precision=precision)
    # A pseudo-labelled member also learns from every test image: that much more to train per epoch.
    extra = len(comp.test) if member.pseudo else 0
    epoch_s, fixed_s = epoch_costs(member_cfg.resolved(sample=is_sample), n_train=len(comp.train),
                                   n_test=len(comp.test), train_ips=figures["train"], infer_ips=figures["infer"],
                                   extra_train=extra, checkpoint_s=figures.get("checkpoint_s", 0.0))
    plan = ModelPlan(member_cfg, 0.0, figures["train"], figures["infer"], epoch_s, fixed_s, 0, share=share,
                     max_epochs=caps.get(member_cfg.model, max_epochs), label=member.label,
                     setup_s=(len(comp.train) + len(comp.test)) / figures["trunk"] if "trunk" in figures else 0.0,
                     second_round=member.pseudo)
    if started_with:   # its folds may train fewer epochs than its run's --epochs, never more
        plan.run_epochs, plan.resumed = int(started_with["epochs"]), True
        plan.max_epochs = min(plan.max_epochs, plan.run_epochs)
        run_dir = project.run_dir(member_cfg.model, member_cfg.name)
        plan.folds_done = sum(fold_done_file(run_dir, k).is_file() for k in range(member_cfg.folds))
    return plan


def scaled_timing(cfg: TrainConfig, measured: dict) -> tuple[str, dict] | None:
    """An estimate for `cfg` from a timing of the same configuration at another size, its images/s scaled by the
    pixels (dlib_face with its frozen trunk trained 0.63x as fast at 150 px as at 112, where the pixels say
    0.56: an estimate on the safe side). None when nothing like it was timed."""
    fields = dict(speed_key(cfg))
    for key, (precision, figures) in measured.items():
        timed = dict(key)
        if {**timed, "size": fields["size"]} == fields:
            ratio = (int(timed["size"]) / cfg.size) ** 2
            return precision, {k: v * ratio if k in ("train", "infer", "trunk") else v for k, v in figures.items()}
    return None


def spares_worth_timing(spares: list, plans: list[ModelPlan], available_s: float, *, folds: int, min_epochs: int,
                        **measure) -> list:
    """The spares to time: every one, except one at a size nothing was timed at (its images are decoded first:
    a minute or more of two cores) that an estimate scaled from another size finds no room for once the
    members and the scaled spares before it have theirs."""
    project, given, measured = measure["project"], measure["given"], measure["measured"]
    max_epochs = measure["max_epochs"]
    worth, estimated = [], []
    for spare in spares:
        spare_cfg, started_with = started_config(spare, project, given)
        timing = None if started_with or speed_key(spare_cfg) in measured else scaled_timing(spare_cfg, measured)
        if timing is None:
            worth.append(spare)
            continue
        plan = member_plan(spare, 1.0, spare_cfg, None, timing, comp=measure["comp"], project=project,
                           is_sample=measure["is_sample"], max_epochs=max_epochs, caps=measure["caps"])
        kept, _ = with_spares([copy.copy(p) for p in plans], [*estimated, plan], available_s, folds=folds,
                              max_epochs=max_epochs, min_epochs=min_epochs)   # as first_plan will plan it
        if plan in kept:
            worth.append(spare)
            estimated.append(plan)
        else:
            need = plan.folds_left * plan.fold_s(plan.max_epochs) * plan.margin + plan.setup_s * plan.margin
            log(f"plan: {spare.label} not timed: at about {plan.train_images_per_s:.0f} train img/s (scaled from "
                f"another size) its {plan.max_epochs} epoch(s) x {folds} folds need about {need / 60:.1f} min, more "
                "than the members leave")
    return worth
