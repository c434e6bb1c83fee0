"""`best --time-limit`: the plan from measured throughput, the budget kept, the blend written."""
import json
import time
from pathlib import Path

import pytest

from kit.best import (SAFETY, BudgetError, ModelPlan, allot, best, epoch_costs, main, measure_throughput,
                       plan_epochs, recipe_config)
from kit.config import TrainConfig, UserError
from kit.ensemble import validate_submission_file

SMALL = dict(size=32, batch_size=16, folds=3, num_threads=1)


def test_plan_fits_the_share_with_the_margin():
    cfg = TrainConfig(folds=5, tta=True)
    epoch_s, fixed_s = epoch_costs(cfg, n_train=1000, n_test=500, train_ips=100, infer_ips=400)
    assert epoch_s == pytest.approx(800 / 100 + 200 / 400)          # train 4/5, score the 1/5 (one view)
    assert fixed_s == pytest.approx((200 + 500) * 2 / 400)          # final held-out + test predictions, flipped too
    epochs = plan_epochs(600, 5, epoch_s, fixed_s, max_epochs=40)
    assert 5 * (epochs * epoch_s + fixed_s) * SAFETY <= 600 < 5 * ((epochs + 1) * epoch_s + fixed_s) * SAFETY
    assert plan_epochs(10_000, 5, epoch_s, fixed_s, max_epochs=7) == 7
    assert plan_epochs(10, 5, epoch_s, fixed_s, max_epochs=7) == 0


def test_models_that_would_train_too_briefly_give_their_time_to_the_first():
    def plan(model, epoch_s):
        return ModelPlan(TrainConfig(model=model), 0.0, 100.0, 400.0, epoch_s=epoch_s, fixed_s=10.0, epochs=0)

    # 3600 s: alone, a model gets 10 epochs of 5 folds ((3600/1.15/5 - 10) // 60); sharing, 5 each.
    kept, left_out = allot([plan("resnet18", 60), plan("scratch", 60)], 3600, folds=5, max_epochs=40, min_epochs=5)
    assert [p.cfg.model for p in kept] == ["resnet18", "scratch"] and [p.epochs for p in kept] == [5, 5]
    kept, left_out = allot([plan("resnet18", 60), plan("scratch", 60)], 3600, folds=5, max_epochs=40, min_epochs=6)
    assert [p.cfg.model for p in kept] == ["resnet18"] and kept[0].epochs == 10 and kept[0].share_s == 3600
    assert [p.cfg.model for p in left_out] == ["scratch"]
    # A resumed run keeps the epochs it started with and is never the reason to leave a model out.
    resumed = plan("scratch", 60)
    resumed.epochs, resumed.resumed = 2, True
    kept, _ = allot([plan("resnet18", 60), resumed], 3600, folds=5, max_epochs=40, min_epochs=5)
    assert [(p.cfg.model, p.epochs) for p in kept] == [("resnet18", 5), ("scratch", 2)]


def test_recipe_fills_only_what_the_user_left_open():
    cfg = TrainConfig(pretrained=False, augment="none")
    r18 = recipe_config(cfg, "resnet18", given={"augment", "pretrained"})
    assert (r18.model, r18.schedule, r18.optimizer, r18.augment, r18.lr_backbone) == ("resnet18", "onecycle", "adamw", "none", 2e-3)
    pretrained = recipe_config(TrainConfig(pretrained=True), "resnet18", given={"pretrained"})
    assert pretrained.lr_backbone is None and pretrained.schedule == "onecycle"   # pretrained rates stay
    # No --no-pretrained: ImageNet weights on real data (pretrained rates), random init on the sample.
    assert recipe_config(TrainConfig(), "resnet18", set(), sample=False).lr_backbone is None
    assert recipe_config(TrainConfig(), "resnet18", set(), sample=True).lr_backbone == 2e-3


def test_best_stays_within_its_budget_and_writes_a_validated_blend(tiny_competition, project):
    limit = 90
    started = time.monotonic()
    lines = []
    result = best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=limit,
                  models=["scratch", "resnet18"], root=project, measure_steps=3, max_epochs=3, min_epochs=1,
                  log=lines.append)
    elapsed = time.monotonic() - started
    assert elapsed <= limit * 1.05, f"took {elapsed:.0f} s of {limit}"
    assert set(result["epochs"]) == {"scratch", "resnet18"} and all(1 <= e <= 3 for e in result["epochs"].values())
    out = Path(result["submission"])
    assert out.parent == project / "submissions"
    submission = validate_submission_file(out, tiny_competition / "sample_submission.csv")
    assert len(submission) == 20
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert len(sidecar["members"]) == 2 and sidecar["cv_score"] == pytest.approx(result["cv"]["score"])
    text = "\n".join(lines)
    assert "where the time went" in text and "plan: scratch" in text and "plan: resnet18" in text
    config = json.loads((project / "runs/scratch" / out.stem / "config.json").read_text())["train"]
    assert config["schedule"] == "onecycle" and config["epochs"] == result["epochs"]["scratch"]

    # The same command again: the runs are complete and kept, and the submission is not overwritten.
    with pytest.raises(UserError, match="exists"):
        best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=limit,
             models=["scratch", "resnet18"], root=project, log=lines.append)
    again = best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=limit,
                 models=["scratch", "resnet18"], root=project, overwrite=True, log=lines.append)
    assert again["epochs"] == result["epochs"] and again["cv"] == result["cv"]
    assert again["seconds"] < elapsed    # nothing retrained


def test_a_budget_too_small_for_one_epoch_stops_before_training(tiny_competition, project):
    with pytest.raises(BudgetError, match="too short"):
        best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=2,
             models=["scratch"], root=project, measure_steps=3, log=lambda *_: None)
    assert not (project / "runs").exists()


def test_auto_precision_on_a_cpu_with_native_bf16_is_the_faster_one_measured(monkeypatch):
    import kit.bench
    import kit.train

    speeds = {"fp32": 180.0, "bf16": 155.0, "auto": 155.0}   # this Intel Xeon's resnet18 figures
    monkeypatch.setattr(kit.train, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(kit.bench, "kit_throughput",
                        lambda cfg, *args, **kwargs: {"train": speeds[cfg.precision], "infer": 500.0})
    lines = []
    chosen, figures = measure_throughput(TrainConfig(device="cpu", pretrained=False), None, None, is_sample=True,
                                         steps=1, log=lines.append)
    assert chosen.precision == "fp32" and figures["train"] == 180.0 and "fp32 180 / bf16 155" in lines[0]
    speeds["bf16"] = 290.0                    # the AMD EPYC's
    assert measure_throughput(TrainConfig(device="cpu"), None, None, is_sample=True, steps=1,
                              log=lines.append)[0].precision == "bf16"
    # An explicit precision, or a resumed run's, is measured as it is.
    for cfg, choose in ((TrainConfig(device="cpu", precision="bf16"), True), (TrainConfig(device="cpu"), False)):
        assert measure_throughput(cfg, None, None, is_sample=True, steps=1, choose_precision=choose,
                                  log=lines.append)[0].precision == cfg.precision
    assert len(lines) == 2


def test_cli_refuses_epochs_and_bad_shares(tiny_competition, capsys):
    assert main(["--time-limit", "5m", "--epochs", "3", "--data", str(tiny_competition)]) == 2
    assert "--epochs is planned" in capsys.readouterr().err
    assert main(["--time-limit", "5m", "--shares", "1,x", "--data", str(tiny_competition)]) == 2
    assert "--shares '1,x'" in capsys.readouterr().err
