"""The one launcher of worker processes (kit/launch.py): each worker's environment, its own GPU, and a parent
that initialises no CUDA. GPUs are faked (tests/test_device.py's fake_cuda); no process is started."""
import dataclasses
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
from kit.parallel import fold_jobs
from kit.tune.workers import WORKER_ENV as TUNE_WORKER_ENV
from kit.tune.workers import trial_workers

sys.path.insert(0, str(Path(__file__).parent))
from fake_gpus import FakeWorkerProcess, fake_cuda, fresh_gpu_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures(fresh_gpu_cache.__name__)


class Started:
    """subprocess.Popen as the launcher calls it: records each worker's command and environment, and the jobs
    sent to fold workers, answering each with the next of `codes` (0: done; else the worker dies unanswered)."""

    def __init__(self, monkeypatch, codes=None):
        self.calls, self.jobs, self.codes = [], [], list(codes or [])
        monkeypatch.setattr(kit.launch.subprocess, "Popen", self)

    def __call__(self, command, env, **popen):
        self.calls.append((command, env))
        if "FACEKIT_CV_WORKER" in env:
            return FakeWorkerProcess(json.loads(env["FACEKIT_CV_WORKER"]), self.job)
        code = self.codes.pop(0) if self.codes else 0
        return type("Process", (), {"wait": lambda self, timeout=None: code, "poll": lambda self: code})()

    def job(self, spec, job):
        self.jobs.append((spec, job))
        return self.codes.pop(0) if self.codes else 0


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
    for index, (spec, job) in enumerate(started.jobs):
        assert job["cfg"]["device"] == "cuda" and spec["device"] == f"cuda:{index}"   # its only GPU
        assert job["cfg"]["num_threads"] == 2 and job["cfg"]["time_limit"] == 60.0
        assert (job["workers"], job["worker"]) == (2, index) and job["fold_plan"]["epochs"] == 2.5
        assert started.calls[index][0][-2:] == ["-m", "kit.cv"]
    assert not torch.cuda.is_initialized()


def test_fold_workers_live_for_the_command_and_a_dead_one_is_replaced(monkeypatch, tmp_path):
    """best sends a member's folds group by group to the same workers (one start each, a frozen trunk computed
    once each): job i of every call goes to worker i; a worker that dies answers with its exit code, and the
    next job starts a new one; leaving the block ends them all."""
    fake_cuda(monkeypatch)
    started = Started(monkeypatch, codes=[0, 0, 0, 0, 3, 0])
    cfg = TrainConfig(model="scratch", devices=["cpu", "cpu"], num_threads=1)
    with kit.parallel.FoldWorkers(tmp_path) as workers:
        for folds in ([0, 1], [2, 3]):
            jobs = fold_jobs(dataclasses.replace(cfg, only_folds=folds), run_dir=tmp_path / "run", time_limit=60.0)
            assert workers.run(jobs) == [0, 0]
        assert len(started.calls) == 2                       # two workers for four folds
        last = fold_jobs(dataclasses.replace(cfg, only_folds=[4], devices=["cpu"]), run_dir=tmp_path, time_limit=9.0)
        assert workers.run(last) == [3]                      # worker 0 died on it, unanswered
        assert workers.run(last) == [0] and len(started.calls) == 3   # the next job: a new worker 0
        processes = [worker.process for worker in workers.running.values()]
    assert [job["cfg"]["only_folds"] for _, job in started.jobs] == [[0, 1], [0, 1], [2, 3], [2, 3], [4], [4]]
    assert [spec["index"] for spec, _ in started.jobs] == [0, 1, 0, 1, 0, 0]
    assert [job["cfg"]["num_threads"] for _, job in started.jobs][-1] == 1
    assert workers.running == {} and all(process.poll() == 0 for process in processes)   # ended with the block


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
    [(spec, job)] = started.jobs
    assert job["cfg"]["device"] == "cuda" and job["cfg"]["num_threads"] is None and job["workers"] == 1


def test_cpu_workers_see_no_gpu_and_share_the_cores(monkeypatch, tmp_path):
    fake_cuda(monkeypatch, (8, 0))
    monkeypatch.setattr(kit.device, "cpu_cores", lambda: 16)
    started = Started(monkeypatch)
    cfg = TrainConfig(model="scratch", devices=["cpu", "cpu"])
    assert kit.parallel.train_in_workers(cfg, root=tmp_path, run_dir=tmp_path, time_limit=None) == [0, 0]
    # CUDA_VISIBLE_DEVICES="": no context by accident
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started.calls] == ["", ""]
    assert [job["cfg"]["num_threads"] for _, job in started.jobs] == [8, 8]
    assert [job["cfg"]["device"] for _, job in started.jobs] == ["cpu", "cpu"]


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
