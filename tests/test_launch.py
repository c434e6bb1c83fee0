"""The one launcher of worker processes (kit/launch.py): each worker's environment, its own GPU, and a parent
that initialises no CUDA. GPUs are faked (tests/test_device.py's fake_cuda); no process is started."""
import json
import sys
from pathlib import Path

import pytest
import torch

import kit.device
import kit.launch
import kit.parallel
from kit.config import TrainConfig
from kit.launch import Worker, run_workers, worker_env
from kit.parallel import fold_workers
from kit.tune.workers import WORKER_ENV as TUNE_WORKER_ENV
from kit.tune.workers import trial_workers

sys.path.insert(0, str(Path(__file__).parent))
from fake_gpus import fake_cuda, fresh_gpu_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures(fresh_gpu_cache.__name__)


class Started:
    """subprocess.Popen as the launcher calls it: records each worker's command and environment."""

    def __init__(self, monkeypatch, codes=None):
        self.calls, self.codes = [], list(codes or [])
        monkeypatch.setattr(kit.launch.subprocess, "Popen", self)

    def __call__(self, command, env):
        self.calls.append((command, env))
        code = self.codes.pop(0) if self.codes else 0
        return type("Process", (), {"wait": lambda self, timeout=None: code, "poll": lambda self: code})()

    def spec(self, index, name="FACEKIT_CV_WORKER"):
        return json.loads(self.calls[index][1][name])


@pytest.mark.parametrize("visible, expected", [(None, ["0", "1"]), ("2,3", ["2", "3"])])
def test_each_fold_worker_gets_its_own_gpu_and_the_parent_no_cuda(monkeypatch, tmp_path, visible, expected):
    fake_cuda(monkeypatch, (7, 5), (7, 5))   # Kaggle's 2 x T4; CUDA's initialisation raises here
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    started = Started(monkeypatch)
    monkeypatch.setattr(kit.device, "cpu_cores", lambda: 4)
    cfg = TrainConfig(model="scratch", devices=["cuda:0", "cuda:1"])
    codes = kit.parallel.train_in_workers(cfg, root=tmp_path, run_dir=tmp_path / "run", time_limit=60.0,
                                          fold_plan={"epochs": 2.5, "epoch_s": 10.0, "infer_image_s": None})
    assert codes == [0, 0]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started.calls] == expected
    for index in (0, 1):
        spec = started.spec(index)
        assert spec["cfg"]["device"] == "cuda" and spec["device"] == f"cuda:{index}"   # its only GPU
        assert spec["cfg"]["num_threads"] == 2 and spec["workers"] == 2 and spec["cfg"]["time_limit"] == 60.0
        assert spec["fold_plan"]["epochs"] == 2.5
        assert started.calls[index][0][-2:] == ["-m", "kit.cv"]
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("visible, expected", [(None, "0"), ("3", "3"), ("5,2", "5")])
def test_a_lone_gpu_gets_one_worker_with_the_threads_one_process_would_have(monkeypatch, tmp_path, visible, expected):
    """cv and best on one GPU (kit/device.py default_devices gives ["cuda:0"]): one worker, that GPU alone in its
    CUDA_VISIBLE_DEVICES (this process's entry for it), the threads one process would have (it shares no cores)."""
    fake_cuda(monkeypatch, *[(8, 0)] * (len(visible.split(",")) if visible else 1))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(kit.device, "cpu_cores", lambda: 16)
    started = Started(monkeypatch)
    cfg = TrainConfig(model="scratch", devices=kit.device.default_devices("auto", None)[:1])
    assert kit.parallel.train_in_workers(cfg, root=tmp_path, run_dir=tmp_path / "run", time_limit=None) == [0]
    [(command, env)] = started.calls
    assert env["CUDA_VISIBLE_DEVICES"] == expected and command[-2:] == ["-m", "kit.cv"]
    spec = started.spec(0)
    assert spec["cfg"]["device"] == "cuda" and spec["cfg"]["num_threads"] is None and spec["workers"] == 1
    assert fold_workers(cfg, root=tmp_path, run_dir=tmp_path, time_limit=None)[0].label == \
        f"worker 0: cuda:0, {torch.get_num_threads()} thread(s)"


def test_cpu_workers_see_no_gpu_and_share_the_cores(monkeypatch, tmp_path):
    fake_cuda(monkeypatch, (8, 0))
    monkeypatch.setattr(kit.device, "cpu_cores", lambda: 16)
    workers = fold_workers(TrainConfig(model="scratch", devices=["cpu", "cpu"]), root=tmp_path, run_dir=tmp_path,
                           time_limit=None)
    assert [worker.gpu for worker in workers] == ["", ""]   # CUDA_VISIBLE_DEVICES="": no context by accident
    assert [worker_env(worker)["CUDA_VISIBLE_DEVICES"] for worker in workers] == ["", ""]
    assert [worker.spec["cfg"]["num_threads"] for worker in workers] == [8, 8]
    assert [worker.spec["cfg"]["device"] for worker in workers] == ["cpu", "cpu"]


@pytest.mark.parametrize("gpus, device, expected", [
    ([(8, 0), (8, 0)], "auto", ["0", "1", "0"]),          # GPUs in turn: three workers on two GPUs
    ([(8, 0)], "auto", ["0", "0", "0"]),
    ([], "auto", ["", "", ""]),                            # no GPU: CPU workers, the cores divided
    ([(8, 0), (8, 0)], "cpu", ["", "", ""]),
    ([(8, 0), (8, 0)], "cuda:1", ["1", "1", "1"]),
])
def test_each_tuner_worker_gets_its_device(monkeypatch, gpus, device, expected):
    fake_cuda(monkeypatch, *gpus)
    monkeypatch.setattr(kit.device, "cpu_cores", lambda: 6)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = {"cfg": TrainConfig(model="scratch", device=device).to_dict(), "study": "s"}
    workers = trial_workers(spec, 3, trials=7, storage="postgresql://u:secret@host/db")
    assert [worker.gpu for worker in workers] == expected
    assert [worker.spec["n_trials"] for worker in workers] == [3, 2, 2]
    assert {worker.spec["cfg"]["device"] for worker in workers} == {"cpu" if expected[0] == "" else "cuda"}
    assert {worker.spec["cfg"]["num_threads"] for worker in workers} == {2}
    env = worker_env(workers[0])
    assert json.loads(env[TUNE_WORKER_ENV])["worker_index"] == 0 and env["FACEKIT_TUNE_STORAGE"].endswith("/db")
    assert "secret" not in " ".join(workers[0].args)   # the URL travels in the environment, never in argv
    assert not torch.cuda.is_initialized()


def test_a_stopped_parent_stops_its_workers(monkeypatch):
    stopped = []

    class Process:
        def __init__(self, command, env):
            self.running = True

        def wait(self, timeout=None):
            if self.running and timeout is None and not stopped:
                raise KeyboardInterrupt          # Ctrl-C while the parent waits
            if self.running and timeout is not None:
                import subprocess
                raise subprocess.TimeoutExpired("worker", timeout)   # it does not stop on its own
            return -15

        def poll(self):
            return None if self.running else -15

        def terminate(self):
            stopped.append(self)
            self.running = False

    monkeypatch.setattr(kit.launch.subprocess, "Popen", Process)
    with pytest.raises(KeyboardInterrupt):
        run_workers([Worker("kit.cv", "X", {}), Worker("kit.cv", "X", {})], grace_s=0.01)
    assert len(stopped) == 2
