"""The cross-validation harness end to end on a tiny synthetic competition."""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

import kit.cv
import kit.processes
from kit.config import TrainConfig
from kit.cv import run_cv
from kit.errors import RunError, UserError
from kit.parallel import WORKER_ENV

sys.path.insert(0, str(Path(__file__).parent))
from fake_gpus import WorkerHere, cuda_initialisations, fake_cuda, fresh_gpu_cache  # noqa: E402
from process_tree import children_of, kill_all, wait_gone  # noqa: E402

FAST = dict(model="scratch", epochs=2, size=32, batch_size=16, num_threads=1, folds=3)


def test_cv_writes_a_complete_run(tiny_competition, project):
    result = run_cv(TrainConfig(data=str(tiny_competition), **FAST), root=project)
    run = result.run_dir
    assert run == project / "runs" / "scratch" / tiny_competition.parent.name
    assert result.complete and 0 <= result.scores.score <= 1
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "gender", "age", "gender_prob", "age_pred"]
    assert len(oof) == 80 and oof["id"].is_unique and set(oof["fold"]) == {0, 1, 2}
    folds = pd.read_csv(next((project / "folds").glob("*-k3-seed42.csv")))
    assert (oof.set_index("id")["fold"] == folds.set_index("id")["fold"].loc[oof["id"]]).all()
    for k in range(3):
        test = pd.read_csv(run / f"test_fold{k}.csv")
        assert len(test) == 20 and test["gender_prob"].between(0, 1).all()
        assert (run / f"fold{k}" / "best.pt").is_file() and (run / f"fold{k}" / "history.csv").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["overall"]["score"] == pytest.approx(result.scores.score)
    assert set(metrics["folds"]) == {"0", "1", "2"}
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["folds_sha256"]
    assert (run / "report.png").stat().st_size > 10_000


def test_only_folds_and_rerun_skips_finished_folds(tiny_competition, project, caplog):
    cfg = TrainConfig(data=str(tiny_competition), **FAST)
    partial = run_cv(TrainConfig(**{**cfg.to_dict(), "only_folds": [1]}), root=project)
    assert not partial.complete and set(partial.fold_scores) == {1}
    assert not (partial.run_dir / "oof.csv").exists()
    full = run_cv(cfg, root=project)
    assert full.complete and "fold 1: done earlier" in "\n".join(caplog.messages)
    assert full.fold_scores[1] == partial.fold_scores[1]


def test_another_configuration_never_overwrites_a_run(tiny_competition, project):
    cfg = TrainConfig(data=str(tiny_competition), **FAST)
    first = run_cv(cfg, root=project)
    before = (first.run_dir / "oof.csv").read_bytes()
    changed = TrainConfig(**{**cfg.to_dict(), "epochs": 1})
    with pytest.raises(RunError, match=r"another configuration or other data \(epochs: 2 -> 1\).*--name.*--overwrite"):
        run_cv(changed, root=project)
    assert (first.run_dir / "oof.csv").read_bytes() == before
    renamed = run_cv(TrainConfig(**{**changed.to_dict(), "name": "one-epoch"}), root=project)
    assert renamed.run_dir.name == "one-epoch" and renamed.complete
    replaced = run_cv(TrainConfig(**{**changed.to_dict(), "overwrite": True}), root=project)
    assert json.loads((replaced.run_dir / "config.json").read_text())["train"]["epochs"] == 1


def test_same_seed_same_score(tiny_competition, project):
    cfg = TrainConfig(data=str(tiny_competition), **FAST)
    a = run_cv(TrainConfig(**{**cfg.to_dict(), "name": "a"}), root=project)
    b = run_cv(TrainConfig(**{**cfg.to_dict(), "name": "b"}), root=project)
    assert a.scores == b.scores


@pytest.mark.parametrize("field, value, message", [
    ("model", "vgg", "unknown model 'vgg'"),
    ("folds", 1, "--folds 1: must be >= 2"),
    ("unfreeze_epoch", 9, "--unfreeze-epoch 9: must be between 0 and --epochs"),
    ("only_folds", [4], r"--only-folds \[4\]: fold\(s\) \[4\] do not exist with --folds 3"),
    ("lr_head", 5.0, r"--lr-head 5.0: must be in \(0, 1\)"),
    ("weights", "/no/such.pth", "--weights '/no/such.pth': no such file"),
    ("precision", "fp16", "--precision fp16 needs CUDA"),
    ("device", "cuda", "--device cuda: no CUDA device is available here"),
    ("age_loss_weight", float("nan"), "--age-loss-weight nan: must be a finite number"),
    ("name", "../../x", "--name '../../x': a run name is one folder name"),
])
def test_bad_options_are_refused_before_any_work(tiny_competition, project, field, value, message):
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST, field: value})
    with pytest.raises(UserError, match=message):
        run_cv(cfg, root=project)
    assert not (project / "runs").exists() and not (project / ".cache").exists()


def command_config(project, *argv) -> TrainConfig:
    """The configuration `cv ARGV` trains."""
    import argparse

    from kit.cv import config_from_command
    from kit.options import add_config_arguments, add_model_argument
    from kit.paths import Project

    parser = argparse.ArgumentParser()
    add_model_argument(parser, positional=True)
    add_config_arguments(parser)
    return config_from_command(parser.parse_args(list(argv)), Project.at(project))


def test_a_model_typed_with_no_options_trains_its_card_as_best_s_member_does(competition_copy, project):
    """`cv dlib_face` as the README's table names it: its card's size (not 64, which it cannot take), recipe,
    frozen trunk and epoch cap, the very configuration of best's dlib_face member; options given still win."""
    import dataclasses

    from kit.best.members import member_config
    from kit.models import check_model_config

    (competition_copy / ".synthetic").unlink()   # real data
    data = str(competition_copy)
    for model, size, frozen, epochs in (("dlib_face", 112, 7, 7), ("dlib_age", 64, 1, 6)):
        cfg = command_config(project, model, "--data", data)
        check_model_config(cfg)
        assert (cfg.size, cfg.frozen_trunk, cfg.resolved(sample=False).epochs) == (size, frozen, epochs)
        assert (cfg.optimizer, cfg.schedule, cfg.augment, cfg.age_loss, cfg.age_target, cfg.tta) == (
            "adamw", "onecycle", "flip", "mse", "bins", True)
        member = member_config(TrainConfig(data=data), model, {}, given={"data"}, name="x", sample=False)
        assert dataclasses.replace(member, name=None) == cfg
    given = command_config(project, "dlib_face", "--data", data, "--size", "120", "--frozen-trunk", "3",
                           "--optimizer", "adam")
    assert (given.size, given.frozen_trunk, given.optimizer, given.schedule) == (120, 3, "adam", "onecycle")
    random_init = command_config(project, "dlib_face", "--data", data, "--no-pretrained")
    assert random_init.frozen_trunk == 0 and random_init.resolved(sample=False).lr_backbone == 1e-3
    assert command_config(project, "torchvision.convnext_tiny", "--data", data, "--size", "64").size == 64
    assert command_config(project, "torchvision.convnext_tiny", "--data", data).size == 224


def test_offline_pretrained_stops_before_decoding(tiny_competition, project, monkeypatch, tmp_path):
    from kit.errors import WeightsError
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("kit.models.weights.imagenet_state_dict",
                        lambda *args: (_ for _ in ()).throw(WeightsError("offline: no weights")))
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST, "model": "resnet18", "pretrained": True})
    with pytest.raises(WeightsError, match="offline"):
        run_cv(cfg, root=project)
    assert not (project / ".cache").exists()


def cli(project, *args):
    env = {**os.environ, "FACEKIT_ROOT": str(project), "PYTHONPATH": str(Path(__file__).parents[1])}
    return [sys.executable, "-m", "kit", "cv", "scratch", *args], env


def test_kill_9_mid_fold_then_resume_gives_the_same_score(competition_copy, project):
    args = ["--data", str(competition_copy), "--folds", "2", "--epochs", "4", "--size", "48",
            "--batch-size", "8", "--num-threads", "1"]
    command, env = cli(project, *args, "--name", "killed")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = project / "runs/scratch/killed/fold0/last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), "the run never reached its first epoch checkpoint"
    assert not (project / "runs/scratch/killed/fold0/metrics.json").exists(), "killed too late to test resume"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 0: resuming after epoch" in resumed.stdout
    command, env = cli(project, *args, "--name", "uninterrupted")
    whole = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    killed = json.loads((project / "runs/scratch/killed/metrics.json").read_text())["overall"]
    clean = json.loads((project / "runs/scratch/uninterrupted/metrics.json").read_text())["overall"]
    assert killed == clean


class FakeClock:
    """Time that passes by `tick` seconds each time it is read: a time limit cuts the same epochs on any machine."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_time_limit_stops_folds_cleanly_and_says_what_it_cut(tiny_competition, project, caplog):
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST, "epochs": 50, "time_limit": 30.0})
    result = run_cv(cfg, root=project, clock=FakeClock(tick=1.0))
    assert result.complete
    for k in range(3):
        fold = json.loads((result.run_dir / f"fold{k}" / "metrics.json").read_text())
        assert fold["cut_at_epoch"] is not None and 1 <= fold["cut_at_epoch"] < 50
        assert (result.run_dir / f"test_fold{k}.csv").is_file()  # the best checkpoint still predicted
    assert "time limit: stopping before epoch" in caplog.text


# ----------------------------------------------------------------------------- trust: stale runs, locks, damage

def test_a_run_on_changed_data_is_refused_not_reported_as_done(competition_copy, project):
    """Same ids, another image (or a changed label): the run's folds were trained on other data."""
    cfg = TrainConfig(data=str(competition_copy), **{**FAST, "epochs": 1})
    run_cv(cfg, root=project)
    shutil.copy(competition_copy / "train/00001.jpg", competition_copy / "train/00000.jpg")
    with pytest.raises(RunError, match=r"other data \(data \(ids, labels or images\): '\w+' -> '\w+'\).*--overwrite"):
        run_cv(cfg, root=project)
    replaced = run_cv(TrainConfig(**{**cfg.to_dict(), "overwrite": True}), root=project)
    assert replaced.complete


def test_overwrite_never_deletes_through_a_linked_run_directory(tiny_competition, project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project / "runs" / "scratch").mkdir(parents=True)
    (project / "runs" / "scratch" / "linked").symlink_to(elsewhere)
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST, "epochs": 1, "name": "linked"})
    run_cv(cfg, root=project)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
    changed = TrainConfig(**{**cfg.to_dict(), "epochs": 2, "overwrite": True})
    with pytest.raises(RunError, match=r"linked is a symbolic link \(to .*elsewhere\).*--overwrite does not delete"):
        run_cv(changed, root=project)
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before


@pytest.mark.parametrize("copies", [2, 4])
def test_two_identical_cv_at_once_never_train_the_same_fold(tiny_competition, project, copies):
    args = ["--data", str(tiny_competition), "--folds", "3", "--epochs", "2", "--size", "32", "--batch-size", "16",
            "--num-threads", "1", "--name", "twice"]
    command, env = cli(project, *args)
    started = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(copies)]
    outputs = [p.communicate(timeout=300) for p in started]
    assert [p.returncode for p in started] == [0] * copies, outputs
    trained = [{int(line.split()[1]) for line in out.splitlines() if line.startswith("fold ") and " done: " in line}
               for out, _ in outputs]
    assert sum(len(folds) for folds in trained) == 3 and set().union(*trained) == {0, 1, 2}
    assert (project / "runs/scratch/twice/oof.csv").is_file()


def test_a_run_directory_being_made_is_waited_for_not_taken_for_a_foreign_one(tiny_competition, project):
    """The race behind a flaky CI, made certain: another process has created the run directory and is
    writing its config.json (a temporary file inside it, the rename still to come)."""
    import threading

    from kit.files import exclusive_lock, write_json
    from kit.rundir import prepare_run_dir

    cfg = TrainConfig(data=str(tiny_competition), **FAST)
    record = {"model": "scratch", "folds_sha256": "f" * 64, "data_fingerprint": "d" * 16}
    run_dir = project / "runs" / "scratch" / "half-made"
    outcome = []

    def second_process():
        try:
            prepare_run_dir(run_dir, cfg, record)
            outcome.append("joined")
        except RunError as err:
            outcome.append(str(err))

    with exclusive_lock(run_dir.parent / ".half-made.lock"):    # the first process, mid-way
        run_dir.mkdir(parents=True)
        (run_dir / f".config.json.{os.getpid()}.abc.tmp").write_text("{")
        second = threading.Thread(target=second_process)
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and not outcome                 # it waits instead of refusing
        (run_dir / f".config.json.{os.getpid()}.abc.tmp").unlink()
        write_json(run_dir / "config.json", {**record, "train": cfg.to_dict()})
    second.join(timeout=10)
    assert outcome == ["joined"]


def test_devices_cpu_cpu_trains_each_fold_as_one_process_would(tiny_competition, project):
    common = ["--data", str(tiny_competition), "--folds", "3", "--epochs", "2", "--size", "32", "--batch-size", "16"]
    command, env = cli(project, *common, "--devices", "cpu,cpu", "--name", "parallel")
    parallel = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert parallel.returncode == 0, parallel.stderr
    assert "worker 0: cpu, 1 thread(s)" in parallel.stdout and "[worker 1 cpu] " in parallel.stdout
    command, env = cli(project, *common, "--num-threads", "1", "--name", "single")
    single = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    scores = {name: {fold: record["scores"] for fold, record in
                     json.loads((project / f"runs/scratch/{name}/metrics.json").read_text())["folds"].items()}
              for name in ("parallel", "single")}
    assert scores["parallel"] == scores["single"]


def devices_run(tiny_competition, project, name: str, epochs: int) -> subprocess.Popen:
    command, env = cli(project, "--data", str(tiny_competition), "--folds", "3", "--epochs", str(epochs), "--size",
                       "32", "--batch-size", "16", "--devices", "cpu,cpu", "--name", name)
    return subprocess.Popen(command, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def read_until_both_trained_an_epoch(process: subprocess.Popen) -> str:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if all(any(f"[worker {i} cpu] fold " in seen and " epoch " in seen for seen in lines) for i in (0, 1)):
            break
    return "".join(lines)


@pytest.mark.parametrize("sent", [signal.SIGKILL, signal.SIGTERM])
def test_devices_workers_stop_with_a_parent_killed_or_terminated_and_the_rerun_resumes(tiny_competition, project,
                                                                                      sent):
    """kill -9 of the parent: its workers die with it (kit/processes.py die_with_parent). SIGTERM to the parent
    alone (a batch scheduler's time-out): it stops them (kit/parallel.py FoldWorkers.run). Either way none
    trains on alone, and the same command resumes their folds."""
    name = f"stopped-{sent.name}"
    parent = devices_run(tiny_competition, project, name, epochs=4)
    workers = []
    try:
        out = read_until_both_trained_an_epoch(parent)
        workers = children_of(parent.pid)
        assert len(workers) == 2, out
        parent.send_signal(sent)
        out += parent.communicate(timeout=60)[0]
        assert parent.returncode != 0 and wait_gone(workers, 5) == [], out
        assert not (project / f"runs/scratch/{name}/metrics.json").is_file()
        rerun = devices_run(tiny_competition, project, name, epochs=4)
        out, _ = rerun.communicate(timeout=300)
        assert rerun.returncode == 0 and "resuming after epoch" in out, out
        assert (project / f"runs/scratch/{name}/metrics.json").is_file()
    finally:
        kill_all([parent.pid, *workers])


def worker(parent: int, index: int, seconds: float = 120) -> int:
    """The pid of --devices worker `index` (its spec is in its environment once it has started)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid in children_of(parent):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            spec = next((v for v in environ if v.startswith(b"FACEKIT_CV_WORKER=")), None)
            if spec is not None and json.loads(spec.split(b"=", 1)[1])["index"] == index:
                return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker {index} of {parent} after {seconds}s")


def test_a_devices_worker_killed_at_its_start_leaves_the_others_every_fold(tiny_competition, project):
    parent = devices_run(tiny_competition, project, "one-left", epochs=2)
    try:
        os.kill(worker(parent.pid, 0), signal.SIGKILL)        # before it could take a fold
        out, _ = parent.communicate(timeout=300)
        assert parent.returncode == 0, out
        assert "worker(s) [0] of --devices cpu,cpu stopped with exit code(s) [-9]" in out
        assert "but the other workers finished every fold" in out and "rerun the same command" not in out
        assert (project / "runs/scratch/one-left/metrics.json").is_file()
    finally:
        kill_all([parent.pid, *children_of(parent.pid)])


def test_the_devices_parent_trains_the_folds_killed_workers_left(tiny_competition, project):
    parent = devices_run(tiny_competition, project, "resumed", epochs=4)
    workers = []
    try:
        read_until_both_trained_an_epoch(parent)
        workers = children_of(parent.pid)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        out, _ = parent.communicate(timeout=300)
        assert parent.returncode == 0, out
        assert "worker(s) [0, 1] of --devices cpu,cpu stopped with exit code(s) [-9, -9]" in out
        left = re.search(r"this process trains the fold\(s\) they left: \[([\d, ]+)\]", out)
        assert left, out
        assert "resuming after epoch" in out        # a fold a worker had begun continues from its last epoch
        metrics = json.loads((project / "runs/scratch/resumed/metrics.json").read_text())
        assert set(metrics["folds"]) == {"0", "1", "2"}
    finally:
        kill_all([parent.pid, *workers])


def test_a_damaged_checkpoint_or_fold_record_is_named(tiny_competition, project):
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST, "epochs": 1})
    result = run_cv(cfg, root=project)
    (result.run_dir / "fold1" / "metrics.json").write_text('{"fold": 1, "sco')        # cut short
    with pytest.raises(RunError, match=r"fold1/metrics.json is damaged .*delete it"):
        run_cv(cfg, root=project)
    (result.run_dir / "fold1" / "metrics.json").unlink()
    (result.run_dir / "fold1" / "last.pt").write_bytes(b"")                        # an empty checkpoint
    with pytest.raises(RunError, match=r"fold1/last.pt is damaged and cannot be read .*Delete it"):
        run_cv(cfg, root=project)
    (result.run_dir / "fold1" / "last.pt").unlink()
    assert run_cv(cfg, root=project).complete                                      # retrained from its start


def test_temporaries_left_by_a_killed_process_are_cleaned(tiny_competition, project):
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST, "epochs": 1})
    result = run_cv(cfg, root=project)
    finished = subprocess.Popen(["true"])
    finished.wait()                                              # its pid is no process's now
    stale = result.run_dir / "fold0" / f".last.pt.{finished.pid}.abc123.tmp"
    stale.write_bytes(b"partial")
    alive = result.run_dir / f".oof.csv.{os.getpid()}.xyz.tmp"   # this very process: kept
    alive.write_bytes(b"being written")
    run_cv(cfg, root=project)
    assert not stale.exists() and alive.exists()


def test_seeds_of_one_network_share_the_folds_and_blend(tiny_competition, project):
    """--seed no longer picks the folds (--fold-seed does): two seeds are two members on one folds file."""
    from kit.ensemble import blend
    from kit.rundir import load_run

    runs = [run_cv(TrainConfig(data=str(tiny_competition), **{**FAST, "epochs": 1, "seed": seed, "name": f"s{seed}"}),
                   root=project) for seed in (1, 2)]
    configs = [json.loads((r.run_dir / "config.json").read_text()) for r in runs]
    assert configs[0]["folds_sha256"] == configs[1]["folds_sha256"] and configs[0]["folds_file"].endswith("seed42.csv")
    assert runs[0].scores != runs[1].scores          # other initialisations, other models
    assert blend([load_run(r.run_dir) for r in runs]).cv.score > 0
    other = run_cv(TrainConfig(data=str(tiny_competition), **{**FAST, "epochs": 1, "fold_seed": 7, "name": "f7"}),
                   root=project)
    assert json.loads((other.run_dir / "config.json").read_text())["folds_file"].endswith("seed7.csv")


# ----------------------------------------------------------------------------- one GPU: a worker, not this process

CV_ARGS = ["scratch", "--folds", "2", "--epochs", "1", "--size", "32", "--batch-size", "16", "--no-pretrained"]


@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_cv_on_one_gpu_trains_its_folds_in_one_worker_on_that_gpu(tiny_competition, project, monkeypatch, capfd,
                                                                   device):
    """One visible GPU (the third of the machine: CUDA_VISIBLE_DEVICES=3), no --devices: the folds are trained
    by one worker started through the launcher with that GPU alone, and this process never initialises CUDA."""
    fake_cuda(monkeypatch, (8, 0))
    made = cuda_initialisations(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    workers = WorkerHere(monkeypatch)
    code = kit.cv.main([*CV_ARGS, "--data", str(tiny_competition), "--device", device, "--time-limit", "10m",
                        "--num-threads", "1", "--name", device])
    assert code == 0 and made == []
    assert len(workers.calls) == 1 and workers.calls[0][0][-2:] == ["-m", "kit.cv"]
    [(spec, job, env)] = workers.jobs   # one job: every fold of the run
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert job["cfg"]["device"] == "cuda" and spec["device"] == ("cuda:0" if device == "auto" else "cuda")
    assert job["workers"] == 1 and job["cfg"]["num_threads"] == 1
    assert 300 < job["cfg"]["time_limit"] <= 600 and job["sent"] <= time.monotonic()
    out = capfd.readouterr().out   # the worker's lines are tagged with its number and device
    assert "device: cuda:0 NVIDIA A100-SXM4-40GB" in out and "precision bf16" in out
    assert [f"[worker 0 {spec['device']}] fold {k} done" in out for k in range(2)] == [True] * 2
    assert "this process trains" not in out     # the worker trained every fold
    assert json.loads((project / f"runs/scratch/{device}/metrics.json").read_text())["folds"].keys() == {"0", "1"}


@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
def test_cv_on_a_cpu_trains_its_folds_in_this_process(tiny_competition, project, monkeypatch, caplog):
    """On a machine with no GPU there is no context to keep out: no worker, no process to start."""
    fake_cuda(monkeypatch)
    made = cuda_initialisations(monkeypatch)
    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    workers = WorkerHere(monkeypatch)
    assert kit.cv.main([*CV_ARGS, "--data", str(tiny_competition), "--num-threads", "1"]) == 0
    assert workers.calls == [] and made == []
    assert "worker" not in caplog.text and "device: cpu " in caplog.text
    assert all(f"fold {k} done" in caplog.text for k in range(2))


def test_a_worker_s_time_limit_leaves_out_the_time_its_start_took(monkeypatch, tmp_path):
    """The parent's limit runs on while a worker starts (Python, torch's import) and while a job reaches it: each
    job has that much less. A worker takes job after job from its stream, answers each, and ends with it."""
    given = []
    monkeypatch.setattr(kit.processes, "die_with_parent", lambda pid: None)
    monkeypatch.setattr(kit.cv, "run_cv", lambda cfg, **kwargs: given.append((cfg, kwargs)))
    jobs = []
    for limit, sent_s_ago, threads in [(60.0, 5.0, 1), (60.0, 90.0, None), (None, 5.0, 2)]:
        cfg = TrainConfig(model="scratch", device="cpu", time_limit=limit, num_threads=threads, only_folds=[1])
        jobs.append(json.dumps({"cfg": cfg.to_dict(), "run_dir": str(tmp_path / "run"), "workers": 1, "worker": 0,
                                "fold_plan": None, "sent": time.monotonic() - sent_s_ago}) + "\n")
    spec = {"root": str(tmp_path), "index": 0, "device": "cpu", "parent": os.getpid(), "answer_fd": -1}
    answers = io.StringIO()
    with mock.patch.dict(os.environ, {WORKER_ENV: json.dumps(spec)}):
        assert kit.cv.worker_main(jobs=iter(jobs), answers=answers) == 0
    assert [cfg.time_limit for cfg, _ in given] == [pytest.approx(55.0, abs=0.5), 1.0, None]
    # A lone worker's default threads (None) are its own, not the 1 an earlier job of two workers set.
    assert [cfg.num_threads for cfg, _ in given] == [1, torch.get_num_threads(), 2]
    assert all(cfg.only_folds == [1] and kwargs["run_dir"] == tmp_path / "run" for cfg, kwargs in given)
    assert answers.getvalue() == "done\n" * 3


@pytest.mark.usefixtures(fresh_gpu_cache.__name__)
@pytest.mark.parametrize("gpus, options, batch, rate", [
    ([(8, 0)], [], 256, 5e-4),                         # on a GPU: its batch, the card's rates x2
    ([(8, 0)], ["--device", "cpu"], 64, 2.5e-4),       # the CPU keeps the recipe
    ([], [], 64, 2.5e-4),
    ([(8, 0)], ["--batch-size", "96"], 96, 2.5e-4),    # a chosen batch: the recipe's rates, as chosen
    ([(8, 0)], ["--lr-head", "1e-4"], 256, 1e-4),      # a chosen rate is kept; the other doubles
])
def test_cv_on_gpus_trains_at_their_batch_with_the_rates_scaled_unless_given(monkeypatch, tiny_competition, project,
                                                                            gpus, options, batch, rate):
    import argparse

    from kit.options import add_config_arguments, add_model_argument
    from kit.paths import Project

    fake_cuda(monkeypatch, *gpus)
    parser = argparse.ArgumentParser()
    add_model_argument(parser, positional=True)
    add_config_arguments(parser)
    args = parser.parse_args(["dlib_age", "--data", str(tiny_competition), *options])
    cfg = kit.cv.config_from_command(args, Project.at(project)).resolved(sample=False)
    assert (cfg.batch_size, cfg.lr_head) == (batch, rate)
    assert cfg.lr_backbone == (5e-4 if batch == 256 else 2.5e-4)
