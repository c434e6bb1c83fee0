"""Folds in parallel: one worker process per device (`cv --devices cuda:0,cuda:1`, or `cpu,cpu`; cv and best
use every GPU this way by default, a lone GPU too: one worker, so that the parent makes no CUDA context; on
a CPU they train in one process, with no worker to start).

Each worker is an ordinary `run_cv` on the same run directory with its own device and threads (workers
share the cores: 2 workers on 16 cores get 8 threads each; a lone one has the threads one process would),
started by kit/launch.py with its own CUDA_VISIBLE_DEVICES: a GPU worker sees only its GPU, as cuda:0.
Which worker trains which fold is decided by the folds' locks (kit/rundir.py fold_lock): a worker takes
the next fold nobody holds, so two processes never train the same fold, and a fold computes exactly what
it would in one process with the same seed and threads. A worker's --time-limit counts only the folds it
will train itself (kit/cv.py train_fold), less the time its own start took.
The parent decodes the data and prepares the run directory first, initialises no CUDA, waits for its
workers, then finishes the run (and trains any fold a failed worker left). A worker dies with its
parent, kill -9 included (kit/processes.py), so a rerun never races a worker left behind.

Workers run `python -m kit.cv` with their spec in FACEKIT_CV_WORKER (kit/cv.py's worker_main).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from kit.config import TrainConfig
from kit.device import worker_threads
from kit.launch import Worker, gpu_of, run_workers

WORKER_ENV = "FACEKIT_CV_WORKER"


def worker_configs(cfg: TrainConfig, devices: list[str]) -> list[TrainConfig]:
    """One configuration per device: the device as the worker sees it (a GPU worker's only GPU is its
    cuda), and its share of the cores (unless --num-threads says how many each gets). A lone worker (one
    GPU) keeps the threads one process would have: its folds compute what they would in this one."""
    threads = cfg.num_threads if len(devices) == 1 else worker_threads(len(devices), cfg.num_threads)
    return [dataclasses.replace(cfg, device="cpu" if device == "cpu" else "cuda", devices=None, num_threads=threads)
            for device in devices]


def fold_workers(cfg: TrainConfig, *, root: Path, run_dir: Path, time_limit: float | None,
                 fold_plan: dict | None = None) -> list[Worker]:
    """The workers of a run over `cfg.devices`. `fold_plan`: best's plan for the folds (kit.train.FoldPlan's
    fields), which each worker hands to its folds as the parent's run_cv would."""
    workers = []
    for index, (device, worker_cfg) in enumerate(zip(cfg.devices, worker_configs(cfg, cfg.devices))):
        spec = {"cfg": dataclasses.replace(worker_cfg, time_limit=time_limit).to_dict(), "root": str(root),
                "run_dir": str(run_dir), "index": index, "device": device, "workers": len(cfg.devices),
                "fold_plan": fold_plan, "parent": os.getpid(),   # it dies with this process
                "launched": time.monotonic()}   # its start (Python, torch's import) counts in its time limit
        threads = worker_cfg.num_threads or torch.get_num_threads()   # a lone worker's default: as here
        workers.append(Worker("kit.cv", WORKER_ENV, spec, gpu=gpu_of(device),
                              label=f"worker {index}: {device}, {threads} thread(s)"))
    return workers


def train_in_workers(cfg: TrainConfig, *, root: Path, run_dir: Path, time_limit: float | None,
                     fold_plan: dict | None = None) -> list[int]:
    """Start one worker per device on the run and wait for all of them; returns their exit codes."""
    return run_workers(fold_workers(cfg, root=root, run_dir=run_dir, time_limit=time_limit, fold_plan=fold_plan))
