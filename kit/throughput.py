"""Images per second of the very steps `cv` runs, measured here and now (`best` plans with these figures,
`bench` prints them beside a compute ceiling).

    steps = KitSteps(cfg, train_images, rows, ages, gender)   # a Trainer as fit_fold builds it
    figures = steps.measure(steps=12, warmup=3)              # {"train", "infer": images/s, "checkpoint_s": s}

The training step is kit/trainer.py's Trainer.step on a batch from fit_fold's own inputs (kit/inputs.py:
the memory-mapped cache through the kit's data path, or a cached frozen trunk's features), with the
learning-rate phase set as fit_fold sets it; the inference step is those inputs' predict on a batch of
inference_batch_size() rows. Everything timed comes after untimed calls of the same work: a GPU's first
call autotunes cuDNN and grows the allocator, a cost paid once, not per image.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kit.age import AgeTarget
from kit.config import TrainConfig
from kit.device import flush_denormals_to_zero, pick_device, set_threads
from kit.files import remove_stale_temporaries, save_torch
from kit.inputs import ImageInputs, TrunkInputs
from kit.predict import inference_batch_size
from kit.trainer import Trainer
from kit.trunk import TrunkFeatures, cacheable, compute, views_of


class KitSteps:
    """One training and one inference step of `cfg` through the kit's data path, ready to be timed."""

    def __init__(self, cfg: TrainConfig, images: np.ndarray, rows: np.ndarray, ages: np.ndarray,
                 gender: np.ndarray, *, clock: Callable[[], float] = time.perf_counter):
        set_threads(cfg.num_threads)
        self.cfg, self.rows, self.clock = cfg, rows, clock
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
            self.features = self.timed_trunk(images, subset)
            self.inputs, self.rows = TrunkInputs(self.features, cfg.frozen_trunk), np.arange(len(subset))
            self.trainer.from_trunk = cfg.frozen_trunk
        self.trainer.model.train()
        self.trainer.set_phase(cfg.unfreeze_epoch or 0, 1.0)   # the unfrozen phase: most of the epochs

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warm_seconds(self, work: Callable, *, warm: Callable) -> tuple[float, object]:
        """(seconds of `work()`, its result), timed after an untimed `warm()`: what a first call pays once
        (cuDNN's autotuner, the allocator's first blocks, torch.save's first copy off the GPU) is not taken
        for the steady speed."""
        warm()
        self.sync()
        started = self.clock()
        result = work()
        self.sync()
        return self.clock() - started, result

    def timed_trunk(self, images: np.ndarray, subset: np.ndarray) -> TrunkFeatures:
        """The frozen trunk's features of images[subset], computed as fit_fold computes them (kit/trunk.py:
        eval mode, the views the run reads), their images/s timed after one untimed batch: timed cold, a GPU's
        first cuDNN call (its autotuner) would be read as the speed of every image of the setup."""
        model, cfg = self.trainer.model, self.cfg
        model.eval()

        def features_of(chosen: np.ndarray) -> list[torch.Tensor]:
            return compute(model, images[chosen], cfg.frozen_trunk, device=self.device,
                           amp_dtype=self.trainer.amp_dtype, channels_last=cfg.channels_last,
                           batch_size=self.infer_batch, views=views_of(cfg))

        seconds, views = self.warm_seconds(lambda: features_of(subset),
                                           warm=lambda: features_of(subset[:self.infer_batch]))
        self.trunk_images_per_s = len(subset) / seconds
        return TrunkFeatures(views, views, self.device)

    def checkpoint_seconds(self, folder: Path | None = None) -> float:
        """Seconds to write one epoch's checkpoints as kit/train.py writes them: best.pt (the kept model; most
        epochs improve) and last.pt (the model, the optimizer's moments, the moving average), each fsynced.
        Written into a temporary folder of `folder` (best passes the project's .cache/, beside runs/ where the
        checkpoints go), timed after an untimed write of best.pt. Call it after some training steps: the
        optimizer's state is made by the first one."""
        trainer = self.trainer
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)   # one left by a process killed while it timed
        # Named as kit/files.py names its temporaries (.NAME.PID.RANDOM.tmp): remove_stale_temporaries knows them.
        with tempfile.TemporaryDirectory(prefix=f".checkpoint-timing.{os.getpid()}.", suffix=".tmp",
                                         dir=folder) as tmp:
            def write_best():
                save_torch(Path(tmp) / "best.pt", {"model": trainer.kept_model.state_dict()})

            def write_both():
                write_best()
                save_torch(Path(tmp) / "last.pt", trainer.state())

            return self.warm_seconds(write_both, warm=write_best)[0]

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
        def calls(count: int) -> None:
            for _ in range(count):
                step()

        return steps * images_per_call / self.warm_seconds(lambda: calls(steps), warm=lambda: calls(warmup))[0]

    def measure(self, *, steps: int, warmup: int, repeats: int = 3, checkpoint_dir: Path | None = None) -> dict:
        """{"train", "infer": images/s; "checkpoint_s": seconds of an epoch's checkpoint writes, into a
        temporary folder of `checkpoint_dir` (default: the system's); with a cached trunk "trunk": images/s
        of computing its features}.

        Each figure is the median of `repeats` timings of steps / repeats calls: on a shared 2-core machine
        one slow moment (another process, the page cache writing back) made a single timing 25-35% low,
        and the plan of a whole hour rests on it."""
        def median_rate(step, images_per_call):
            rates = sorted(self.timed(step, images_per_call, steps=max(1, steps // repeats),
                                      warmup=warmup if i == 0 else 0) for i in range(repeats))
            return rates[len(rates) // 2]

        figures = {"train": median_rate(self.train_step, self.batch_size),
                   "infer": median_rate(self.infer_step, self.infer_batch),
                   "checkpoint_s": self.checkpoint_seconds(checkpoint_dir)}
        if self.trunk_images_per_s is not None:
            figures["trunk"] = self.trunk_images_per_s
        return figures
