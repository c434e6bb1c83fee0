"""GPUs faked for tests: torch.cuda as it would be on a machine with GPUs of given capabilities (no GPU is
needed: the kit's decisions are tested, not the silicon), with CUDA's initialisation refused."""
from types import SimpleNamespace

import pytest
import torch

import kit.gpus

CUDA13_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]   # torch 2.14.1+cu130's
CUDA126_ARCHES = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]   # a cu126 wheel's: a P100 runs
NAMES = {(6, 0): "Tesla P100-PCIE-16GB", (7, 5): "Tesla T4", (8, 0): "NVIDIA A100-SXM4-40GB", (9, 0): "NVIDIA H100"}


class CudaInitialised(AssertionError):
    pass


def refuse_cuda_init(*args, **kwargs):
    raise CudaInitialised("this process initialised CUDA")


def fake_cuda(monkeypatch, *capabilities, arch_list=CUDA13_ARCHES, cuda="13.0", driver=(580, 65, 6), pci=None):
    """torch.cuda as it would be with GPUs of `capabilities` (none: no usable GPU), bf16 reported as supported
    everywhere (torch counts emulation), and CUDA's initialisation refused: the kit must read the GPUs'
    properties in a child process (here: the faked torch.cuda read in-process, as that child would)."""
    properties = [SimpleNamespace(name=NAMES.get(tuple(c), "GPU"), total_memory=16 * 2**30) for c in capabilities]
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(capabilities))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties[index])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: tuple(capabilities[index or 0]))
    monkeypatch.setattr(torch.cuda, "init", refuse_cuda_init)
    monkeypatch.setattr(torch.cuda, "_lazy_init", refuse_cuda_init)
    monkeypatch.setattr(kit.gpus, "probe", kit.gpus.read_gpus)
    monkeypatch.setattr(kit.gpus, "driver_version", lambda: driver)
    monkeypatch.setattr(kit.gpus, "nvidia_pci_devices", lambda: len(capabilities) if pci is None else pci)
    kit.gpus.visible_gpus.cache_clear()


@pytest.fixture
def fresh_gpu_cache():
    """visible_gpus() is read once per process: each test starts and ends with it unread."""
    kit.gpus.visible_gpus.cache_clear()
    yield
    kit.gpus.visible_gpus.cache_clear()


def cuda_initialisations(monkeypatch) -> list:
    """CUDA's initialisation refused, as fake_cuda does, and each attempt counted: one this process swallowed
    still shows. Call it after fake_cuda."""
    made = []

    def counted(name):
        return lambda *args, **kwargs: made.append(name) or refuse_cuda_init()

    for name in ("init", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, counted(name))
    return made


class FakeWorkerProcess:
    """A fold worker as kit/parallel.py's FoldWorkers talks to it, run in this process: each job line written to
    its stdin is handed to `on_job(spec, job)` at once, and answered on the worker's answer pipe unless on_job
    returns a non-zero exit code, which ends the worker as a crash would (its pipe closes, unanswered)."""

    def __init__(self, spec: dict, on_job):
        import os

        self.spec, self.on_job, self.code = spec, on_job, None
        self.answer_fd = os.dup(spec["answer_fd"])   # the parent closes its copy once started, as for a child
        self.stdin = SimpleNamespace(write=self.job, flush=lambda: None, close=self.end)

    def job(self, line: str) -> None:
        import json
        import os

        if self.code is not None:
            raise BrokenPipeError("the worker has ended")
        code = self.on_job(self.spec, json.loads(line))
        if code:
            self.end(code)
        else:
            os.write(self.answer_fd, b"done\n")

    def end(self, code: int = 0) -> None:
        import os

        if self.code is None:
            self.code = code
            os.close(self.answer_fd)

    def poll(self):
        return self.code

    def wait(self, timeout=None):
        self.end()
        return self.code

    def terminate(self):
        self.end(-15)


class WorkerHere:
    """subprocess.Popen as kit/launch.py calls it, for cv's fold workers and best's measuring child: each runs in
    this process on its spec (in the environment it is given), on the CPU, where its GPU is faked (what is tested
    is who trains and who times, not the silicon): a fold worker's jobs go to kit/cv.py's worker_main; the
    measuring child answers `figures` for every configuration it is given. `calls`: each one's command and
    environment; `jobs`: (worker spec, job, environment) of every job sent to a fold worker, in order."""

    def __init__(self, monkeypatch, figures: dict | None = None):
        import kit.launch
        import kit.processes

        self.calls, self.jobs, self.figures = [], [], figures
        monkeypatch.setattr(kit.launch.subprocess, "Popen", self)
        monkeypatch.setattr(kit.processes, "die_with_parent", lambda pid: None)   # its parent is this process

    def __call__(self, command, env, **popen):
        import json

        from kit.best.measure import MEASURE_ENV
        from kit.files import write_json
        from kit.parallel import WORKER_ENV

        self.calls.append((command, env))
        if MEASURE_ENV in env:
            spec = json.loads(env[MEASURE_ENV])
            write_json(spec["out"], [{"precision": todo["cfg"]["precision"], "figures": self.figures}
                                     for todo in spec["todo"]])
            return SimpleNamespace(wait=lambda timeout=None: 0, poll=lambda: 0)
        return FakeWorkerProcess(json.loads(env[WORKER_ENV]), lambda spec, job: self.job(spec, job, env))

    def job(self, spec: dict, job: dict, env: dict) -> int:
        import copy
        import io
        import json
        import os
        from unittest import mock

        from kit.cv import worker_main
        from kit.parallel import WORKER_ENV

        self.jobs.append((spec, copy.deepcopy(job), env))
        job["cfg"]["device"] = "cpu"   # the GPU it sees as its cuda, faked by the CPU, where torch sees none
        with mock.patch.dict(os.environ, {WORKER_ENV: env[WORKER_ENV],
                                          "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", "")}), \
                mock.patch.object(torch.cuda, "is_available", lambda: False), \
                mock.patch.object(torch.cuda, "device_count", lambda: 0):
            return worker_main(jobs=[json.dumps(job)], answers=io.StringIO())   # the worker's loop, for one job

    def started(self, env_name: str) -> list[tuple[dict, dict]]:
        """(spec, environment) of each process started with its spec in `env_name`, in order."""
        import json

        return [(json.loads(env[env_name]), env) for _, env in self.calls if env_name in env]
