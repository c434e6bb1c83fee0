"""One fold's model, optimizer and training step, exactly as `cv` runs them; `bench` and `best` time
this same step.

    trainer = Trainer(cfg, device, age_target, init_seed=epoch_seed(cfg.seed, fold, -1))
    frozen = trainer.set_phase(epoch, lr_factor(cfg.schedule, step, total_steps, warmup_steps))
    loss = trainer.step(x, gender, ages)          # forward, backward, optimizer, moving average

Loss = cross-entropy(gender) + age_loss_weight * age loss (kit/age.py). With --ema-decay, an exponential
moving average of the weights is what gets scored and kept: it averages out the noise of the last steps,
as a free ensemble along the trajectory.
"""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from kit.age import AgeTarget
from kit.config import TrainConfig
from kit.device import autocast, pick_amp_dtype
from kit.models import FaceModel, create_model


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """A seed for (fold, epoch); epoch -1 seeds the model's initialisation."""
    return int(np.random.default_rng([seed, fold, epoch + 1]).integers(2**62))


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at `step`."""
    t = step / max(1, total_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":  # as torch's OneCycleLR: cosine up from 1/25 for 30%, then down to ~0
        if t < 0.3:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * t / 0.3)) / 2
        return max(1e-4, (1 + math.cos(math.pi * (t - 0.3) / 0.7)) / 2)
    if step < warmup_steps:     # cosine with linear warm-up
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(1e-4, (1 + math.cos(math.pi * progress)) / 2)


def make_optimizer(cfg: TrainConfig, model: FaceModel) -> torch.optim.Optimizer:
    head_ids = {id(p) for p in model.head_parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": model.head_parameters(), "role": "head"}, {"params": body, "role": "backbone"}]
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=cfg.lr_head, weight_decay=cfg.weight_decay)


class MovingAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics, kept in a copy of it.

    The decay warms up as (1 + n) / (10 + n) over the first updates (as TensorFlow's and timm's EMA do):
    a fixed 0.998 would keep the random initialisation's weights for the first thousand steps.

    torch's AveragedModel, used here before, keeps its count of updates on the device and reads it back at
    every step (`bool(n_averaged == 0)`, `if n_averaged > 0`): on a GPU each read waits for all the queued
    work, so the host can no longer run ahead of it. Here the count is a Python int, the weight a Python
    number, and an update is one _foreach kernel per (device, dtype) group of tensors: nothing is read back.
    state_dict() has AveragedModel's keys ("n_averaged", then the copy's as "module.*"): last.pt files of
    an earlier kit resume, and new ones load where AveragedModel did."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        self.decay = decay
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        weight = 1 - min((1 + self.n_averaged) / (10 + self.n_averaged), self.decay)
        groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for averaged, current in zip(_tensors(self.module), _tensors(model), strict=True):
            group = groups.setdefault((averaged.device, averaged.dtype), ([], []))
            group[0].append(averaged)
            group[1].append(current)
        for averaged, current in groups.values():
            # The first update copies; integer buffers (BatchNorm's step counters) are copied, not averaged.
            if self.n_averaged == 0 or not averaged[0].is_floating_point():
                torch._foreach_copy_(averaged, current)
            else:
                torch._foreach_lerp_(averaged, current, weight)
        self.n_averaged += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"n_averaged": torch.tensor(self.n_averaged),
                **{f"module.{key}": value for key, value in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict({key.removeprefix("module."): value for key, value in state.items()
                                     if key != "n_averaged"})
        self.n_averaged = int(state["n_averaged"])   # read back once, when a fold resumes


def _tensors(model: torch.nn.Module) -> itertools.chain[torch.Tensor]:
    return itertools.chain(model.parameters(), model.buffers())


def loss_scaler(device: torch.device, amp_dtype) -> torch.amp.GradScaler:
    """fp16's gradients underflow without scaling; bf16 and fp32 need none (the scaler is then a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


class Trainer:
    """A model on its device with its optimizer, loss scaler and (optional) moving average."""

    def __init__(self, cfg: TrainConfig, device: torch.device, age_target: AgeTarget, *, init_seed: int):
        self.cfg, self.device, self.age_target = cfg, device, age_target
        if device.type == "cuda":   # a run's batches have one shape: cuDNN's fastest algorithms, timed once
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = pick_amp_dtype(cfg.precision, device)
        torch.manual_seed(init_seed)
        model = create_model(cfg.model, pretrained=bool(cfg.pretrained), weights=cfg.weights,
                             age_outputs=age_target.outputs, stem=cfg.stem)
        self.model = model.to(device, memory_format=torch.channels_last if cfg.channels_last
                              else torch.contiguous_format)
        self.optimizer = make_optimizer(cfg, self.model)
        self.scaler = loss_scaler(device, self.amp_dtype)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.average = MovingAverage(self.model, cfg.ema_decay) if cfg.ema_decay else None
        # --frozen-trunk: those weights never train; with their outputs cached (kit/trunk.py, which sets
        # from_trunk) the batches are the trunk's features and only the rest of the network runs.
        self.frozen = set(map(id, self.model.trunk_parameters(cfg.frozen_trunk))) if cfg.frozen_trunk else set()
        self.from_trunk = 0

    @property
    def kept_model(self) -> torch.nn.Module:
        """What is scored after each epoch and kept as best.pt: the moving average if there is one."""
        return self.average.module if self.average is not None else self.model

    @property
    def scored_model(self) -> torch.nn.Module:
        return self.average.module if self.average is not None else self.forward

    def set_phase(self, epoch: int, factor: float) -> bool:
        """Freeze or unfreeze the backbone for `epoch` and set the group learning rates. True if frozen."""
        cfg, model = self.cfg, self.model
        frozen = epoch < cfg.unfreeze_epoch
        model.backbone.requires_grad_(not frozen)
        if frozen:
            model.backbone.eval()   # keep BatchNorm statistics too while the backbone is frozen
        for parameter in model.parameters():
            if id(parameter) in self.frozen:
                parameter.requires_grad_(False)
        for group in self.optimizer.param_groups:
            base = cfg.lr_head if frozen else cfg.lr_backbone
            group["lr"] = base * factor
        return frozen

    def step(self, x: torch.Tensor, gender: torch.Tensor, ages: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
        """One optimizer step on a prepared batch; returns the (detached) loss.

        `gender` holds class indices; with `weights` (a batch with pseudo-labelled rows) it holds the
        probability of male instead, a soft target, and every row's loss counts by its weight."""
        with autocast(self.device, self.amp_dtype):
            logits, age_output = self.model.from_trunk(x, self.from_trunk) if self.from_trunk else self.forward(x)
        if weights is None:
            gender_loss = F.cross_entropy(logits.float(), gender, label_smoothing=self.cfg.label_smoothing)
        else:
            soft = torch.stack([1 - gender, gender], 1)
            per_row = F.cross_entropy(logits.float(), soft, label_smoothing=self.cfg.label_smoothing, reduction="none")
            gender_loss = (per_row * weights).sum() / weights.sum()
        loss = gender_loss + self.cfg.age_loss_weight * self.age_target.loss(age_output, ages, weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model)
        return loss.detach()

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "average": self.average.state_dict() if self.average is not None else None,
                # fp16's loss scale, grown over thousands of steps: a resumed fold goes on from it, as an
                # uninterrupted one would, instead of skipping steps to find it again
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        if self.scaler.is_enabled() and state.get("scaler"):   # last.pt of an earlier kit has none
            self.scaler.load_state_dict(state["scaler"])
