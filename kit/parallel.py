"""Folds in parallel: one worker process per device (`cv --devices cuda:0,cuda:1`, or `cpu,cpu`; cv and best
use every GPU this way by default, a lone GPU too: one worker, so that the parent makes no CUDA context; on
a CPU they train in one process, with no worker to start).

A worker lives for the whole command and trains what it is sent, job after job (`FoldWorkers`): cv sends each
worker one job, its share of the run's folds; best sends a member's folds to its workers group by group and
re-plans between groups, and its workers go on to the next member. So a worker starts (Python, torch, a CUDA
context) once per command, not once per fold, and a member's frozen trunk (kit/trunk.py, kept for the
process) is computed once per worker, not once per fold.

Each job is an ordinary `run_cv` on the run directory with the worker's device and threads (workers share
the cores: 2 workers on 16 cores get 8 threads each; a lone one has the threads one process would), the
worker started by kit/launch.py with its own CUDA_VISIBLE_DEVICES: a GPU worker sees only its GPU, as cuda:0.
Which worker trains which fold is decided by the folds' locks (kit/rundir.py fold_lock): a worker takes the
next fold nobody holds, so two processes never train the same fold, and a fold computes exactly what it
would in one process with the same seed and threads. A job's --time-limit counts only the folds its worker
will train itself (kit/cv.py train_fold), less the time the job took to reach it (the worker's start, for
the first). The parent decodes the data and prepares the run directory first, initialises no CUDA, waits for
its workers, then finishes the run (and trains any fold a failed worker left). A worker dies with its
parent, kill -9 included (kit/processes.py), so a rerun never races a worker left behind.

Workers run `python -m kit.cv` with their spec in FACEKIT_CV_WORKER, read their jobs as JSON lines on stdin,
and answer each on a pipe of their own once it is done (kit/cv.py's worker_main); an answer that never comes
(the pipe closed) is a worker that died, whose exit code the job gets, and the next job starts a new one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

from kit.config import TrainConfig
from kit.device import worker_threads
from kit.launch import STOP_GRACE_S, Worker, gpu_of, start, stop
from kit.processes import Terminated, sigterm_raises_terminated

WORKER_ENV = "FACEKIT_CV_WORKER"


def worker_configs(cfg: TrainConfig, devices: list[str]) -> list[TrainConfig]:
    """One configuration per device: the device as the worker sees it (a GPU worker's only GPU is its
    cuda), and its share of the cores (unless --num-threads says how many each gets). A lone worker (one
    GPU) keeps the threads one process would have (None: its own default): its folds compute what they
    would in this one."""
    threads = cfg.num_threads if len(devices) == 1 else worker_threads(len(devices), cfg.num_threads)
    return [dataclasses.replace(cfg, device="cpu" if device == "cpu" else "cuda", devices=None, num_threads=threads)
            for device in devices]


def fold_jobs(cfg: TrainConfig, *, run_dir: Path, time_limit: float | None,
              fold_plan: dict | None = None) -> list[tuple[str, dict]]:
    """(device, job) for each of `cfg.devices`: a share of the run's folds (cfg.only_folds, else all), each
    worker trying every len(devices)-th first. `fold_plan`: best's plan for the folds (kit.train.FoldPlan's
    fields), which each worker hands to its folds as the parent's run_cv would."""
    return [(device, {"cfg": dataclasses.replace(worker_cfg, time_limit=time_limit).to_dict(), "run_dir": str(run_dir),
                      "fold_plan": fold_plan, "workers": len(cfg.devices), "worker": index})
            for index, (device, worker_cfg) in enumerate(zip(cfg.devices, worker_configs(cfg, cfg.devices)))]


@dataclasses.dataclass
class _Running:
    device: str
    process: subprocess.Popen
    answers: object   # the read end of its answer pipe (a text file)


class FoldWorkers:
    """The fold workers of one command, started on their first job and kept for the next:

        with FoldWorkers(root) as workers:
            codes = workers.run(fold_jobs(cfg, run_dir=run_dir, time_limit=600.0))   # 0 each, or an exit code

    Worker `i` trains the `i`-th job of every call on that job's device (a new device, or a worker that
    died, gets a new process). Leaving the block closes their job streams and waits for them; Ctrl-C or
    SIGTERM while they train stops them too (kit/launch.py stop)."""

    def __init__(self, root: Path, *, grace_s: float = STOP_GRACE_S):
        self.root, self.grace_s = root, grace_s
        self.running: dict[int, _Running] = {}

    def __enter__(self) -> FoldWorkers:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(grace_s=0.0 if isinstance(error, Terminated) else self.grace_s)

    def run(self, jobs: list[tuple[str, dict]]) -> list[int]:
        """Send job i to worker i and wait for every answer; each job's exit code (0: done). Ctrl-C or SIGTERM
        while they train leaves the `with` block, which stops them."""
        with sigterm_raises_terminated():
            for index, (device, job) in enumerate(jobs):
                self.send(index, device, job)
            return [self.answer(index) for index in range(len(jobs))]

    def send(self, index: int, device: str, job: dict) -> None:
        worker = self.running.get(index)
        if worker is None or worker.device != device or worker.process.poll() is not None:
            worker = self.start(index, device, job)
        line = json.dumps({**job, "sent": time.monotonic()}) + "\n"   # CLOCK_MONOTONIC: one clock for every process
        try:
            worker.process.stdin.write(line)
            worker.process.stdin.flush()
        except BrokenPipeError:   # it died since it was asked: its exit code is the job's answer
            pass

    def answer(self, index: int) -> int:
        worker = self.running[index]
        if worker.answers.readline():
            return 0
        code = worker.process.wait()   # the pipe closed without an answer: the worker ended
        return code or 1

    def start(self, index: int, device: str, job: dict) -> _Running:
        self.retire(index)
        read_end, write_end = os.pipe()
        spec = {"root": str(self.root), "index": index, "device": device, "answer_fd": write_end,
                "parent": os.getpid()}   # it dies with this process
        threads = job["cfg"]["num_threads"] or "its default"
        process = start(Worker("kit.cv", WORKER_ENV, spec, gpu=gpu_of(device),
                               label=f"worker {index}: {device}, {threads} thread(s)"),
                        stdin=subprocess.PIPE, pass_fds=(write_end,), text=True)
        os.close(write_end)   # the worker holds it now: its end closes the pipe
        self.running[index] = _Running(device, process, os.fdopen(read_end))
        return self.running[index]

    def retire(self, index: int) -> None:
        """End worker `index` (its device changes, or it died)."""
        worker = self.running.pop(index, None)
        if worker is not None:
            self.end([worker], grace_s=self.grace_s)

    def close(self, *, grace_s: float) -> None:
        workers, self.running = list(self.running.values()), {}
        self.end(workers, grace_s=grace_s)

    @staticmethod
    def end(workers: list[_Running], *, grace_s: float) -> None:
        """No more jobs (a worker's loop ends with its stream), then wait for them (kit/launch.py stop)."""
        for worker in workers:
            try:
                worker.process.stdin.close()
            except BrokenPipeError:
                pass
        stop([worker.process for worker in workers], grace_s=grace_s)
        for worker in workers:
            worker.answers.close()


def train_in_workers(cfg: TrainConfig, *, root: Path, run_dir: Path, time_limit: float | None,
                     fold_plan: dict | None = None, workers: FoldWorkers | None = None) -> list[int]:
    """One job per device of `cfg.devices` on the run, on `workers` (best's, kept between its calls) or on
    workers started for this call alone; returns their exit codes."""
    jobs = fold_jobs(cfg, run_dir=run_dir, time_limit=time_limit, fold_plan=fold_plan)
    if workers is not None:
        return workers.run(jobs)
    with FoldWorkers(root) as workers:
        return workers.run(jobs)
