"""One fold's training: the moving average of the weights, the age targets, resuming."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kit.config import TrainConfig
from kit.train import FoldData, FoldPlan, fit_fold
from kit.trainer import MovingAverage

FAST = dict(model="scratch", epochs=2, size=32, batch_size=16, num_threads=1, schedule="onecycle", lr_backbone=3e-3)


def fold_data(n_train=64, n_valid=32, n_test=16, seed=0) -> FoldData:
    rng = np.random.default_rng(seed)
    n = n_train + n_valid
    ages = rng.integers(1, 90, n)
    gender = rng.integers(0, 2, n)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = np.clip(ages[:, None, None] * 2.5, 0, 255)  # age is visible in the red channel
    images[..., 1] = gender[:, None, None] * 200
    frame = pd.DataFrame({"id": np.arange(n), "gender": gender, "age": ages, "cache_index": np.arange(n)})
    test = pd.DataFrame({"id": np.arange(n_test), "cache_index": np.arange(n_test)})
    return FoldData(train=frame[:n_train], valid=frame[n_train:], test=test, train_images=images,
                    test_images=images[:n_test])


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A step that changes weights and BatchNorm's running statistics and step counter."""
    optimizer.zero_grad()
    model(torch.randn(8, 3)).square().mean().backward()
    optimizer.step()


def test_the_moving_average_is_the_one_computed_by_hand():
    torch.manual_seed(0)
    model, decay = small_model(), 0.3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    average = MovingAverage(model, decay)
    expected = {}
    for n in range(6):
        train_step(model, optimizer)
        average.update(model)
        current = {key: value.clone() for key, value in model.state_dict().items()}
        # n updates before this one: the first copies, then the decay warms up as (1 + n) / (10 + n) to 0.3
        # (n = 1, 2: 2/11, 3/12; from n = 3 on: 0.3), and integer step counters are copied.
        weight = 1 - min((1 + n) / (10 + n), decay)
        expected = {key: value if n == 0 or not value.is_floating_point() else
                    expected[key] + weight * (value - expected[key]) for key, value in current.items()}
        for key, value in average.module.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(average.module[2].weight, model[2].weight)   # lagging behind, not a copy
    assert average.module[1].num_batches_tracked.item() == 6
    assert average.n_averaged == 6


class RecordedOps(TorchDispatchMode):
    """The aten ops that run while it is on, by name: every read of a tensor's value by the host (.item(),
    bool(), int(), an `if` on a tensor) runs aten._local_scalar_dense, and a copy to the host aten._to_copy
    or aten.copy_."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_an_update_reads_nothing_back_from_the_device():
    """On a GPU a host read waits for all queued work; the CPU has no such wait to detect, so the update's
    ops are recorded as they are dispatched instead: only the _foreach kernels run."""
    with RecordedOps() as check:
        bool(torch.tensor(1) > 0)
    assert "aten._local_scalar_dense.default" in check.ops   # the check sees a host read
    torch.manual_seed(0)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    average = MovingAverage(model, 0.9)
    for n in range(3):
        train_step(model, optimizer)
        with RecordedOps() as recorded:
            average.update(model)
        # one kernel per (device, dtype) group: the float32 tensors and the int64 step counter
        averaging = "aten._foreach_copy_.default" if n == 0 else "aten._foreach_lerp_.Scalar"
        assert sorted(recorded.ops) == sorted([averaging, "aten._foreach_copy_.default"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_an_update_on_a_gpu_does_not_synchronise():
    model = small_model().cuda()
    average = MovingAverage(model, 0.9)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            average.update(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_average_in_a_last_pt_of_an_earlier_kit_loads():
    """Before, the average was a torch.optim.swa_utils.AveragedModel: its state_dict is what last.pt holds."""
    torch.manual_seed(0)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    earlier = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
    for _ in range(3):
        train_step(model, optimizer)
        earlier.update_parameters(model)
    average = MovingAverage(small_model(), 0.9)
    average.load_state_dict(earlier.state_dict())
    assert average.n_averaged == 3
    assert average.state_dict().keys() == earlier.state_dict().keys()
    assert all(torch.equal(value, earlier.state_dict()[key]) for key, value in average.state_dict().items())
    earlier.load_state_dict(average.state_dict())   # and the other way round


def test_ema_keeps_the_averaged_weights_as_best(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 1, "ema_decay": 0.9}).resolved(sample=True)
    result = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=False)["model"]
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    averaged = {k.removeprefix("module."): v for k, v in last["average"].items() if k.startswith("module.")}
    assert all(torch.equal(best[k], averaged[k]) for k in best)
    assert not torch.equal(best["age_head.weight"], last["model"]["age_head.weight"])  # not the raw weights
    assert np.isfinite(result.oof["age_pred"]).all()


@pytest.mark.parametrize("options", [dict(ema_decay=0.9), dict(age_target="bins", age_loss="mse")])
def test_an_interrupted_fold_resumes_to_the_same_result(tmp_path, options, caplog):
    cfg = TrainConfig(**{**FAST, **options}).resolved(sample=True)
    whole = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "whole")

    def crash_after_first_epoch(fold, epoch, scores):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "resumed", on_epoch=crash_after_first_epoch)
    (tmp_path / "resumed/history.csv").unlink()   # a kill between last.pt and history.csv: one epoch short
    resumed = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "resumed")
    assert "resuming after epoch 0" in caplog.text
    pd.testing.assert_frame_equal(whole.oof, resumed.oof, check_exact=True)
    whole_last, resumed_last = (torch.load(tmp_path / run / "last.pt", weights_only=False)
                                for run in ("whole", "resumed"))
    for part in ("model", "average"):   # the moving average (its update count too) as if never interrupted
        if whole_last[part] is not None:
            assert whole_last[part].keys() == resumed_last[part].keys()
            assert all(torch.equal(value, resumed_last[part][key]) for key, value in whole_last[part].items())
    assert whole.scores == resumed.scores
    history = pd.read_csv(tmp_path / "resumed/history.csv")   # rewritten from the checkpoint: every epoch
    assert list(history["epoch"]) == list(range(cfg.epochs))


def test_bins_learn_the_ages_the_images_show(tmp_path):
    # The expected age over bins 0..120 always lies in that range, so a range check cannot fail. This one can:
    # the ages are drawn in the red channel, and three epochs of bins must follow them (measured: correlation
    # 0.95, RMSE 14.9 against 24.2 for the training mean) rather than collapse towards a constant.
    cfg = TrainConfig(**{**FAST, "epochs": 3, "age_target": "bins"}).resolved(sample=True)
    data = fold_data()
    result = fit_fold(cfg, fold=0, data=data, fold_dir=tmp_path)
    truth, predicted = result.oof["age"].to_numpy(float), result.oof["age_pred"].to_numpy(float)
    constant = np.sqrt(np.mean((truth - data.train["age"].mean()) ** 2))
    assert np.corrcoef(truth, predicted)[0, 1] > 0.8
    assert np.sqrt(np.mean((truth - predicted) ** 2)) < 0.8 * constant


@pytest.mark.parametrize("switch", ["function", "command line"])
def test_denormals_flush_to_zero_on_the_cpu(switch):
    from kit.__main__ import main
    from kit.device import flush_denormals_to_zero

    torch.set_flush_denormal(False)       # other tests' commands may have switched it on in this process
    tiny = torch.tensor([1e-39])          # below float32's smallest normal number
    assert (tiny * 2).item() > 0
    try:
        if switch == "function":
            flush_denormals_to_zero(torch.device("cpu"))
        else:                             # a training command switches it on before anything else
            with pytest.raises(SystemExit):
                main(["bench", "--help"])
        assert (tiny * 2).item() == 0.0 and (torch.tensor([1e-30]) * 2).item() == pytest.approx(2e-30)
    finally:
        torch.set_flush_denormal(False)


class StepClock:
    """A clock that moves one second per training step (Trainer.step patched to tick it), and not otherwise."""

    def __init__(self, monkeypatch):
        import kit.train

        self.now = 0.0
        step = kit.train.Trainer.step

        def ticking_step(trainer, *args, **kwargs):
            self.now += 1.0
            return step(trainer, *args, **kwargs)

        monkeypatch.setattr(kit.train.Trainer, "step", ticking_step)

    def __call__(self):
        return self.now


def test_a_deadline_inside_the_first_epoch_stops_it_between_batches_with_the_predictions_made(tmp_path,
                                                                                               monkeypatch):
    clock = StepClock(monkeypatch)
    cfg = TrainConfig(**{**FAST, "epochs": 3, "batch_size": 4}).resolved(sample=True)   # 16 steps an epoch
    result = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path, deadline=10.0, clock=clock)
    assert clock() <= 10.0                                    # the 16-step epoch would have ended at 16
    assert result.cut_at_epoch == 1 and result.history[0]["epoch_fraction"] == pytest.approx(4 / 16)
    assert len(result.oof) == 32 and np.isfinite(result.oof["age_pred"]).all() and len(result.test) == 16


def test_the_planner_s_inference_estimate_keeps_a_fold_that_fits_from_being_cut(tmp_path, monkeypatch):
    """Seen at 5 minutes on the real data: a 1-epoch fold of dlib_age (cached trunk: inference 4x faster than
    training) was cut at 4% of its batches because the wall guessed its predictions from the training speed."""
    clock = StepClock(monkeypatch)
    cfg = TrainConfig(**{**FAST, "epochs": 1, "batch_size": 4, "tta": False}).resolved(sample=True)   # 16 steps
    # At 1 s a step, guessed at a third of that per image, the held-out and test predictions (32 + 48 images)
    # would take 6.7 s: 16 + 6.7 > 18. The planner's estimate (1 ms an image) says the epoch fits, as it does.
    guessed = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "guessed", deadline=18.0, clock=clock)
    assert guessed.cut_at_epoch == 1 and guessed.epochs_trained < 0.5
    clock.now = 0.0
    planned = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "planned", deadline=18.0,
                       plan=FoldPlan(epochs=1, infer_image_s=0.001), clock=clock)
    assert planned.cut_at_epoch is None and planned.epochs_trained == 1 and clock() == 16.0


def test_the_epochs_that_fit_are_decided_at_the_fold_s_start_and_kept_when_it_resumes(tmp_path, monkeypatch,
                                                                                        caplog):
    clock = StepClock(monkeypatch)
    cfg = TrainConfig(**{**FAST, "epochs": 3}).resolved(sample=True)
    # 40 s an epoch, the final predictions about 10 s: 2.25 of the 3 epochs fit in 100 s, and the schedule
    # (one-cycle) runs over those 2.25: two whole epochs and a quarter of one, its learning rate annealed.
    whole = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "whole", deadline=100.0,
                     plan=FoldPlan(epoch_s=40.0), clock=clock)
    assert whole.planned_epochs == 2.25 and len(whole.history) == 3 and whole.cut_at_epoch is None
    assert whole.history[-1]["epoch_fraction"] == pytest.approx(0.25) and whole.epochs_trained == 2.25
    assert whole.history[-1]["lr"] < 0.1 * whole.history[0]["lr"] and clock() <= 100.0   # annealed, not cut
    assert "2.25 of 3 epoch(s) fit before the time limit" in caplog.text

    def crash_after_first_epoch(fold, epoch, scores):
        raise KeyboardInterrupt

    clock.now = 0.0
    with pytest.raises(KeyboardInterrupt):
        fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "resumed", deadline=100.0,
                 plan=FoldPlan(epoch_s=40.0), on_epoch=crash_after_first_epoch, clock=clock)
    resumed = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "resumed", clock=clock)  # no limit now
    assert resumed.planned_epochs == 2.25 and len(resumed.history) == 3
    pd.testing.assert_frame_equal(whole.oof, resumed.oof)


def test_a_resumed_fp16_fold_goes_on_from_its_loss_scale(tmp_path, monkeypatch):
    """fp16 needs a GPU; its GradScaler's state goes into last.pt and back the same way on the CPU's own
    scaler, enabled here with a scale that grows every 3 steps (4 steps an epoch)."""
    import kit.trainer

    scalers = []

    def growing_scaler(device, amp_dtype):
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3))
        return scalers[-1]

    monkeypatch.setattr(kit.trainer, "loss_scaler", growing_scaler)
    cfg = TrainConfig(**FAST).resolved(sample=True)
    whole = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "whole")
    grown = scalers[-1].state_dict()
    assert grown["scale"] == 2.0**12 and grown["_growth_tracker"] == 2   # 8 steps: grown twice, 2 towards a third

    def crash_after_first_epoch(fold, epoch, scores):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "resumed", on_epoch=crash_after_first_epoch)
    saved = torch.load(tmp_path / "resumed/last.pt", weights_only=False)["scaler"]
    assert saved["scale"] == 2.0**11 and saved["_growth_tracker"] == 1
    resumed = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "resumed")
    assert scalers[-1].state_dict() == grown        # not restarted from 2**10
    pd.testing.assert_frame_equal(whole.oof, resumed.oof)


def test_without_fp16_last_pt_holds_no_scaler(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 1}).resolved(sample=True)
    fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["scaler"] is None
