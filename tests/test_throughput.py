"""What best plans with (kit/throughput.py): every figure timed after untimed calls of the same work, the
frozen trunk's too, and an epoch's checkpoint writes. Clocks are faked: the decisions are tested, not the
machine's speed."""
import time

import numpy as np
import pytest
import torch

import kit.throughput
from kit.config import TrainConfig
from kit.throughput import KitSteps

SMALL = dict(size=32, batch_size=8, num_threads=1, device="cpu", pretrained=False)


class FakeClock:
    """time.perf_counter as KitSteps reads it; the work advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def kit_steps(cfg: TrainConfig, clock: FakeClock, n: int = 40) -> KitSteps:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, cfg.size, cfg.size, 3), dtype=np.uint8)
    return KitSteps(cfg.resolved(sample=True), images, np.arange(n), rng.uniform(1, 90, n), rng.integers(0, 2, n),
                    clock=clock)


def test_the_cold_first_calls_are_left_out_of_a_rate():
    clock = FakeClock()
    steps = kit_steps(TrainConfig(model="scratch", **SMALL), clock)
    calls = []

    def step():   # the first call autotunes (10 s), the others take 1 s
        clock.now += 10.0 if not calls else 1.0
        calls.append(clock.now)

    assert steps.timed(step, 8, steps=3, warmup=1) == pytest.approx(8 * 3 / 3.0)
    assert len(calls) == 4


@pytest.mark.parametrize("augment, views", [("flip", 2), ("none", 1)])
def test_a_frozen_trunk_is_timed_warm_with_the_views_its_run_computes(monkeypatch, augment, views):
    """A GPU's first trunk batch autotunes cuDNN: timed cold, it made the setup of every image look slow."""
    clock, computed = FakeClock(), []

    def compute(model, images, blocks, *, batch_size, views, **options):
        assert not model.training                      # as kit/trunk.py computes them: eval mode
        batches = -(-len(images) // batch_size)
        clock.now += (10.0 if not computed else 0.0) + 1.0 * batches   # the first call's autotuning: once
        computed.append((len(images), views))
        return [torch.zeros(len(images), 4, 2, 2) for _ in range(views)]

    monkeypatch.setattr(kit.throughput, "compute", compute)
    cfg = TrainConfig(model="dlib_age", frozen_trunk=2, augment=augment, tta=False, **SMALL)
    steps = kit_steps(cfg, clock, n=600)               # 512 rows timed in 2 batches of 256
    assert computed == [(256, views), (512, views)]    # one untimed batch, then the timed ones
    assert steps.trunk_images_per_s == pytest.approx(512 / 2.0)
    assert steps.trainer.model.training                # the steps that follow train


def test_an_epoch_s_checkpoints_are_timed_after_an_untimed_write(monkeypatch, tmp_path):
    clock, written = FakeClock(), []

    def save_torch(path, obj):   # the first write pays torch.save's first use; best.pt 1 s, last.pt 2 s
        clock.now += 5.0 if not written else {"best.pt": 1.0, "last.pt": 2.0}[path.name]
        written.append(path.name)
        expected = {"model", "optimizer", "average", "scaler"} if path.name == "last.pt" else {"model"}
        assert set(obj) == expected            # what kit/train.py writes: the kept model, or the state to resume

    steps = kit_steps(TrainConfig(model="scratch", **SMALL), clock)
    monkeypatch.setattr(kit.throughput, "save_torch", save_torch)
    assert steps.checkpoint_seconds(tmp_path / "runs") == pytest.approx(3.0)
    assert written == ["best.pt", "best.pt", "last.pt"]
    assert list((tmp_path / "runs").iterdir()) == []     # the temporary folder is gone


def test_measure_includes_the_checkpoint_writes_and_leaves_nothing_behind(tmp_path):
    steps = kit_steps(TrainConfig(model="scratch", **SMALL), time.perf_counter)
    figures = steps.measure(steps=3, warmup=1, checkpoint_dir=tmp_path)
    assert figures["train"] > 0 and figures["infer"] > 0 and figures["checkpoint_s"] > 0
    assert list(tmp_path.iterdir()) == []
