"""Worker processes, started one way for every command: cv's and best's fold workers (kit/parallel.py,
`--devices`, and by default one per GPU, a lone GPU too), the tuner's trial workers (kit/tune/workers.py) and the
child that times best's members on a GPU (kit/best/measure.py).

A worker is `python -m MODULE` with its spec as JSON in one environment variable, no progress bars, and
its own CUDA_VISIBLE_DEVICES: the one GPU it trains on, which it sees as cuda:0, or "" for a CPU worker,
which then cannot make a CUDA context by accident. The parent initialises no CUDA for its workers (what
it needs to know of the GPUs is read by a child process, kit/gpus.py), so each worker has its GPU whole.

    workers = [Worker("kit.cv", "FACEKIT_CV_WORKER", spec, gpu="1", label="worker 1: cuda:1")]
    codes = run_workers(workers)   # start them, wait; Ctrl-C or SIGTERM here stops them too
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.gpus import visible_gpu_names
from kit.log import log
from kit.processes import Terminated, sigterm_raises_terminated

STOP_GRACE_S = 10.0   # after Ctrl-C, which reached the workers too: their time to stop on their own


@dataclass(frozen=True)
class Worker:
    module: str                    # run as `python -m MODULE ARGS...`
    spec_env: str                  # the environment variable its spec travels in
    spec: dict
    gpu: str | None = None         # its CUDA_VISIBLE_DEVICES: one GPU, "" for none, None to leave it as it is
    label: str = ""                # how the parent's log names it
    env: dict = field(default_factory=dict)   # anything else it is told (a storage URL kept out of argv)
    args: tuple[str, ...] = ()


def gpu_of(device: str) -> str | None:
    """The CUDA_VISIBLE_DEVICES of a worker training on `device` as this process names it: cuda:1 -> this
    process's second GPU (by its own CUDA_VISIBLE_DEVICES entry where it has one); cpu -> "" (none)."""
    if device == "cpu":
        return ""
    if not device.startswith("cuda"):
        return None
    names = visible_gpu_names()
    index = int(device.partition(":")[2] or 0)
    return names[index] if index < len(names) else str(index)


def worker_env(worker: Worker) -> dict[str, str]:
    kit_parent = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **worker.env, worker.spec_env: json.dumps(worker.spec), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [kit_parent, os.environ.get("PYTHONPATH")]))}
    if worker.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = worker.gpu
    return env


def start(worker: Worker, **popen) -> subprocess.Popen:
    """Start `worker`; `popen`: more of subprocess.Popen's arguments (a job stream, a pipe to pass on)."""
    if worker.label:
        log(worker.label + ("" if worker.gpu is None else f" (CUDA_VISIBLE_DEVICES={worker.gpu!r})"))
    return subprocess.Popen([sys.executable, "-m", worker.module, *worker.args], env=worker_env(worker), **popen)


def run_workers(workers: list[Worker], *, grace_s: float = STOP_GRACE_S) -> list[int]:
    """Start the workers and wait for all of them; their exit codes, in order. Stopped here (Ctrl-C,
    SIGTERM), they are stopped too before this raises: none is left training on its own."""
    processes = []
    with sigterm_raises_terminated():
        try:
            for worker in workers:
                processes.append(start(worker))
            return [process.wait() for process in processes]
        except KeyboardInterrupt as interrupt:
            stop(processes, grace_s=0.0 if isinstance(interrupt, Terminated) else grace_s)
            raise


def stop(processes: list[subprocess.Popen], *, grace_s: float) -> None:
    """Ctrl-C at a terminal reaches the workers too, and they stop on their own (their folds resume later,
    their trials are marked failed): they get `grace_s` for it. Those still running then get SIGTERM, which
    they handle like Ctrl-C; a SIGTERM sent to this process alone gives them no grace."""
    deadline = time.monotonic() + grace_s
    try:
        for process in processes:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait()
