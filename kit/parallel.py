"""Folds in parallel: one worker process per device (`cv --devices cuda:0,cuda:1`, or `cpu,cpu`).

Each worker is an ordinary `run_cv` on the same run directory with its own device and threads (CPU
workers share the cores: 2 workers on 16 cores get 8 threads each). Which worker trains which fold is
decided by the folds' locks (kit/rundir.py fold_lock): a worker takes the next fold nobody holds, so
two processes never train the same fold, and a fold computes exactly what it would in one process
with the same seed and threads. The parent decodes the data and prepares the run directory first,
waits for its workers, then finishes the run (and trains any fold a failed worker left). A worker dies
with its parent, kill -9 included (kit/processes.py), so a rerun never races a worker left behind.

Workers run `python -m kit.cv` with their spec in FACEKIT_CV_WORKER (kit/cv.py's worker_main).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from kit.config import TrainConfig
from kit.log import log

WORKER_ENV = "FACEKIT_CV_WORKER"


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_configs(cfg: TrainConfig, devices: list[str]) -> list[TrainConfig]:
    """One configuration per device: the device itself, and for CPU workers their share of the cores
    (unless --num-threads says how many each gets)."""
    n_cpu = sum(device == "cpu" for device in devices)
    threads = cfg.num_threads or max(1, cpu_cores() // max(1, n_cpu))
    return [dataclasses.replace(cfg, device=device, devices=None,
                                num_threads=threads if device == "cpu" else cfg.num_threads)
            for device in devices]


def train_in_workers(cfg: TrainConfig, *, root: Path, run_dir: Path, time_limit: float | None) -> list[int]:
    """Start one worker per device on the run and wait for all of them; returns their exit codes."""
    kit_parent = str(Path(__file__).resolve().parents[1])
    processes = []
    for index, worker_cfg in enumerate(worker_configs(cfg, cfg.devices)):
        spec = {"cfg": dataclasses.replace(worker_cfg, time_limit=time_limit).to_dict(), "root": str(root),
                "run_dir": str(run_dir), "index": index, "parent": os.getpid()}   # it dies with this process
        env = {**os.environ, WORKER_ENV: json.dumps(spec), "TQDM_DISABLE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [kit_parent, os.environ.get("PYTHONPATH")]))}
        log(f"worker {index}: {worker_cfg.device}" + (f", {worker_cfg.num_threads} thread(s)"
                                                      if worker_cfg.device == "cpu" else ""))
        processes.append(subprocess.Popen([sys.executable, "-m", "kit.cv"], env=env))
    return wait_for(processes)


def wait_for(processes: list[subprocess.Popen]) -> list[int]:
    """Every worker's exit code; Ctrl-C or SIGTERM here stops them too (their folds resume later)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return [process.wait() for process in processes]
    except KeyboardInterrupt:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
