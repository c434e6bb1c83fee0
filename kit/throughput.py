"""Images per second of the very steps `cv` runs, measured here and now (`best` plans with these figures,
`bench` prints them beside a compute ceiling).

    steps = KitSteps(cfg, train_images, rows, ages, gender)   # a Trainer as fit_fold builds it
    figures = steps.measure(steps=12, warmup=3)              # {"train": images/s, "infer": images/s}

The training step is kit/trainer.py's Trainer.step on a batch from fit_fold's own inputs (kit/inputs.py:
the memory-mapped cache through the kit's data path, or a cached frozen trunk's features), with the
learning-rate phase set as fit_fold sets it; the inference step is those inputs' predict on a batch of
inference_batch_size() rows.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from kit.age import AgeTarget
from kit.config import TrainConfig
from kit.device import flush_denormals_to_zero, pick_device, set_threads
from kit.inputs import ImageInputs, TrunkInputs
from kit.predict import inference_batch_size
from kit.trainer import Trainer
from kit.trunk import TrunkFeatures, cacheable, compute


class KitSteps:
    """One training and one inference step of `cfg` through the kit's data path, ready to be timed."""

    def __init__(self, cfg: TrainConfig, images: np.ndarray, rows: np.ndarray, ages: np.ndarray,
                 gender: np.ndarray):
        set_threads(cfg.num_threads)
        self.cfg, self.rows = cfg, rows
        self.device = pick_device(cfg.device)
        # The weights training starts from: pretrained ones can run slower than random ones (denormals).
        flush_denormals_to_zero(self.device)
        self.trainer = Trainer(cfg, self.device, AgeTarget.for_training(cfg.age_target, cfg.age_loss, ages),
                               init_seed=0)
        # fit_fold's inputs (kit/inputs.py): `rows` index the image cache, or with a cached trunk its features
        self.inputs = ImageInputs(images, images, self.device, cfg.channels_last)
        self.source = self.inputs.train
        self.gender = torch.tensor(np.asarray(gender), dtype=torch.long)
        self.ages = torch.tensor(np.asarray(ages), dtype=torch.float32)
        self.batch_size = min(cfg.batch_size, len(rows))
        self.infer_batch = min(inference_batch_size(cfg.batch_size), len(rows))
        self.rng, self.generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
        self.features, self.trunk_images_per_s = None, None
        if cacheable(cfg):   # a cached frozen trunk: time building its features, then the steps on them
            subset = rows[:min(len(rows), 2 * self.infer_batch)]
            started = time.perf_counter()
            views = compute(self.trainer.model, images[subset], cfg.frozen_trunk, device=self.device,
                            amp_dtype=self.trainer.amp_dtype, channels_last=cfg.channels_last,
                            batch_size=self.infer_batch)
            self.trunk_images_per_s = len(subset) / (time.perf_counter() - started)
            self.features = TrunkFeatures(views, views, self.device)
            self.inputs, self.rows = TrunkInputs(self.features, cfg.frozen_trunk), np.arange(len(subset))
            self.trainer.from_trunk = cfg.frozen_trunk
        self.trainer.model.train()
        self.trainer.set_phase(cfg.unfreeze_epoch or 0, 1.0)   # the unfrozen phase: most of the epochs

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self) -> None:
        picked = self.rng.integers(0, len(self.rows), self.batch_size)
        x = self.inputs.training(self.rows[picked], self.cfg.augment, self.generator)
        self.trainer.step(x, self.gender[picked].to(self.device), self.ages[picked].to(self.device))

    def infer_step(self) -> None:
        start = int(self.rng.integers(0, max(1, len(self.rows) - self.infer_batch + 1)))
        self.inputs.predict(self.trainer.model, "train", self.rows[start:start + self.infer_batch], tta=False,
                            amp_dtype=self.trainer.amp_dtype, age_target=self.trainer.age_target,
                            channels_last=self.cfg.channels_last, batch_size=self.infer_batch)
        self.trainer.model.train()

    def timed(self, step, images_per_call: int, *, steps: int, warmup: int) -> float:
        """Images per second over `steps` calls of `step` after `warmup` untimed ones."""
        for _ in range(warmup):
            step()
        self.sync()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        self.sync()
        return steps * images_per_call / (time.perf_counter() - started)

    def measure(self, *, steps: int, warmup: int, repeats: int = 3) -> dict:
        """{"train", "infer": images/s, and with a cached trunk "trunk": images/s of computing its features}.

        Each figure is the median of `repeats` timings of steps / repeats calls: on a shared 2-core machine
        one slow moment (another process, the page cache writing back) made a single timing 25-35% low,
        and the plan of a whole hour rests on it."""
        def median_rate(step, images_per_call):
            rates = sorted(self.timed(step, images_per_call, steps=max(1, steps // repeats),
                                      warmup=warmup if i == 0 else 0) for i in range(repeats))
            return rates[len(rates) // 2]

        figures = {"train": median_rate(self.train_step, self.batch_size),
                   "infer": median_rate(self.infer_step, self.infer_batch)}
        if self.trunk_images_per_s is not None:
            figures["trunk"] = self.trunk_images_per_s
        return figures
