"""`facekit kaggle run -- COMMAND ...`: facekit commands on Kaggle's machines, as a script kernel.

    facekit kaggle run -- best --time-limit 8h            # GPU T4 x2, no internet, the bundle attached
    facekit kaggle run --gpu p100 -- cv resnet18 --epochs 12 -- ensemble resnet18/x   # commands in order
    facekit kaggle output OWNER/SLUG --version 3          # wait for a pushed version, download its output

1. Nothing is pushed while the project's folds/ differ from the bundle's (runs on other folds cannot be
   blended with the local ones) or while the bundle built here is not the one uploaded.
2. .cache/kaggle-kernels/<slug>/ gets kernel-metadata.json and <slug>.py (kit/kaggle/kernel_script.py:
   installs the bundle offline, runs the commands in /kaggle/working).
3. The official client pushes it (KaggleApi.kernels_push); an error or an invalid source in Kaggle's
   answer stops here.
4. The status is polled with back-off (QUEUED, RUNNING, COMPLETE or ERROR); an ERROR stops with Kaggle's
   failure message and the tail of the kernel's log.
5. The output lands in runs/kaggle/<slug>/v<N>/: the runs at <model>/<name>/, so that
   `facekit ensemble kaggle/<slug>/v<N>/<model>/<name> <local run>` blends them with local runs (on the
   same folds file, checked by its sha256), the other files under output/ (submission.csv,
   submissions/, folds/), the log as kernel.log, and what ran in kaggle-run.json.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import time
from pathlib import Path

from kit.commands import COMMANDS
from kit.errors import KaggleFault, SubmitError
from kit.files import write_json, write_text
from kit.kaggle import datasets
from kit.kaggle.api import DEFAULT_RETRY, Retry, call_with_retry
from kit.kaggle.scores import Polling
from kit.log import log
from kit.paths import Project

DEFAULT_KERNEL = "facekit-run"
# Kaggle's accelerators as its kernel metadata takes them: a machine_shape, or enable_gpu alone for the
# default GPU (the P100, which the client calls retired: Kaggle runs such a session on a T4).
GPUS = {"t4x2": {"enable_gpu": True, "machine_shape": "NvidiaTeslaT4"},
        "p100": {"enable_gpu": True},
        "none": {"enable_gpu": False}}
KERNEL_POLLING = Polling(interval=30.0, factor=1.5, max_interval=300.0, timeout=13 * 3600.0)
TERMINAL = ("COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")
REFUSED_COMMANDS = ("kaggle", "download", "submit", "submissions")   # they talk to Kaggle: no internet there
LOG_TAIL_LINES = 40
RECORD_NAME = "kaggle-run.json"


def kernels_home(root=None) -> Path:
    return Project.at(root).cache / "kaggle-kernels"


def output_dir(slug: str, version: int, root=None) -> Path:
    return Project.at(root).runs / "kaggle" / slug / f"v{version}"


def accelerator(choice: str) -> dict:
    if choice in GPUS:
        return dict(GPUS[choice])
    if re.fullmatch(r"(Nvidia|Tpu)[A-Za-z0-9]+", choice):   # any shape Kaggle names, e.g. NvidiaL4
        return {"enable_gpu": choice.startswith("Nvidia"), "enable_tpu": choice.startswith("Tpu"),
                "machine_shape": choice}
    raise SubmitError(f"--gpu {choice}: one of {', '.join(GPUS)}, or a Kaggle machine shape such as NvidiaL4")


def check_kernel_slug(slug: str) -> None:
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) or not 5 <= len(slug) <= 50:
        raise SubmitError(f"--kernel {slug}: a kernel slug is 5 to 50 lowercase letters and digits with single dashes")


def split_commands(words: list[str]) -> list[list[str]]:
    """`cv scratch --epochs 1 -- ensemble scratch/x` -> [[cv, scratch, --epochs, 1], [ensemble, scratch/x]]."""
    commands, current = [], []
    for word in [*words, "--"]:
        if word == "--":
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    if not commands:
        raise SubmitError("no command to run on Kaggle: facekit kaggle run [options] -- COMMAND [ARGS ...]")
    for command in commands:
        if command[0] not in COMMANDS:
            raise SubmitError(f"facekit has no command {command[0]!r} (commands: {', '.join(COMMANDS)})")
        if command[0] in REFUSED_COMMANDS:
            raise SubmitError(f"`facekit {command[0]}` does not run inside a kernel (it talks to Kaggle, and the "
                              "kernel has no internet); run it here")
    return commands


# ----------------------------------------------------------------------------- the kernel folder
def kernel_source(*, bundle: dict, commands: list[list[str]], keep_checkpoints: bool) -> str:
    template = Path(__file__).with_name("kernel_script.py").read_text()
    config = {"bundle": bundle["dataset"], "content_sha256": bundle["content_sha256"], "commands": commands,
              "keep_checkpoints": keep_checkpoints}
    line = 'CONFIG: dict = {"bundle": "", "content_sha256": "", "commands": [], "keep_checkpoints": False}'
    if line not in template:
        raise AssertionError("kernel_script.py lost its CONFIG line")
    return template.replace(line, f"CONFIG: dict = json.loads({json.dumps(json.dumps(config))})")


def kernel_metadata(*, ref: str, competition: str, bundle: str, gpu: str, internet: bool) -> dict:
    slug = ref.split("/", 1)[1]
    return {"id": ref, "title": slug.replace("-", " "), "code_file": f"{slug}.py", "language": "python",
            "kernel_type": "script", "is_private": True, **{"enable_gpu": False, **accelerator(gpu)},
            "enable_internet": internet, "dataset_sources": [bundle], "competition_sources": [competition],
            "kernel_sources": [], "model_sources": []}


def write_kernel_folder(folder: Path, metadata: dict, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "kernel-metadata.json", metadata)
    write_text(folder / metadata["code_file"], source)


# ----------------------------------------------------------------------------- Kaggle calls
def _kernel_call(what: str, call, subject: str, retry: Retry):
    """call_with_retry, with a kernel's words for a 403 or 404 (kit/kaggle/api.py speaks of competitions),
    and the client's ValueErrors (bad metadata, a denied kernel) as KaggleFaults."""
    def guarded():
        try:
            return call()
        except ValueError as error:
            raise KaggleFault(f"{what}: {error}", kind="refused") from error

    try:
        return call_with_retry(what, guarded, competition=None, retry=retry)
    except KaggleFault as fault:
        if fault.kind in ("forbidden", "not_found"):
            raise KaggleFault(f"{what}: Kaggle shows these credentials no {subject} (HTTP "
                              f"{403 if fault.kind == 'forbidden' else 404}{datasets.kaggle_said(fault)})",
                              kind=fault.kind) from fault
        raise


def push_kernel(api, folder: Path, *, ref: str, session_timeout: float | None = None) -> tuple[int, str]:
    """Push the folder; return (version number, URL). An error or an invalid source in the answer is a
    KaggleFault: the client itself only prints them."""
    timeout = str(int(session_timeout)) if session_timeout else None

    def push():
        with contextlib.redirect_stdout(io.StringIO()):   # the client's own remarks (title vs slug, ...)
            return api.kernels_push(str(folder), timeout=timeout)

    response = _kernel_call(f"pushing the kernel {ref}", push, f"kernel {ref}", Retry(attempts=1))
    if response is None:
        raise KaggleFault(f"pushing the kernel {ref}: no answer from Kaggle", kind="refused")
    if response.error:
        raise KaggleFault(f"Kaggle refused the kernel {ref}: {response.error}", kind="refused")
    invalid = {"dataset": response.invalid_dataset_sources, "competition": response.invalid_competition_sources,
               "kernel": response.invalid_kernel_sources, "model": response.invalid_model_sources}
    invalid = {kind: list(sources) for kind, sources in invalid.items() if sources}
    if invalid:
        hints = {"dataset": "is the bundle uploaded, and readable by you?",
                 "competition": "have you joined it and accepted its rules?"}
        listed = "; ".join(f"{kind} source(s) {', '.join(sources)} ({hints.get(kind, 'do they exist?')})"
                           for kind, sources in invalid.items())
        raise KaggleFault(f"Kaggle refused the kernel {ref}'s inputs: {listed}. Nothing runs without them",
                          kind="refused")
    if not response.version_number:
        raise KaggleFault(f"Kaggle saved the kernel {ref} but named no version ({response.url})", kind="refused")
    return int(response.version_number), response.url


def kernel_status(api, ref: str, version: int, retry: Retry = DEFAULT_RETRY):
    return _kernel_call(f"reading the status of {ref} version {version}",
                        lambda: api.kernels_status(f"{ref}/{version}"), f"kernel {ref} version {version}", retry)


def wait_for_kernel(api, ref: str, version: int, *, polling: Polling = KERNEL_POLLING, retry: Retry = DEFAULT_RETRY,
                    sleep=time.sleep, clock=time.monotonic):
    """Poll until the version is COMPLETE, ERROR or cancelled; return Kaggle's last answer. Each state
    change is logged once; the waits grow by polling.factor up to polling.max_interval."""
    deadline = clock() + polling.timeout
    interval = polling.interval
    last = None
    while True:
        response = kernel_status(api, ref, version, retry)
        status = response.status.name
        if status != last:
            log(f"{ref} version {version}: {status.lower()}")
            last = status
        if status in TERMINAL:
            return response
        if clock() + interval > deadline:
            raise KaggleFault(f"{ref} version {version} is still {status.lower()} after {polling.timeout:.0f}s; "
                              f"`facekit kaggle output {ref} --version {version}` waits for it again", kind="timeout")
        sleep(interval)
        interval = min(interval * polling.factor, polling.max_interval)


def log_text(raw: str | None) -> str:
    """A kernel's log as text: Kaggle keeps it as a JSON list of {stream_name, time, data}."""
    if not raw:
        return ""
    try:
        entries = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(entries, list):
        return raw
    return "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict))


def log_tail(api, ref: str, version: int, lines: int = LOG_TAIL_LINES, retry: Retry = DEFAULT_RETRY) -> str:
    try:
        text = log_text(_kernel_call(f"reading the log of {ref} version {version}",
                                     lambda: api.kernels_logs(f"{ref}/{version}"), f"kernel {ref}", retry))
    except KaggleFault as fault:
        return f"(the log could not be read: {fault})"
    kept = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(kept) if kept else "(the log is empty)"


def failed(api, ref: str, version: int, response, retry: Retry = DEFAULT_RETRY) -> KaggleFault:
    status = response.status.name.lower()
    reason = response.failure_message or "no failure message given"
    return KaggleFault(f"{ref} version {version} ended {status} on Kaggle: {reason}\n"
                       f"--- the last lines of its log ---\n{log_tail(api, ref, version, retry=retry)}\n---\n"
                       f"(the whole log: kaggle kernels logs {ref}/{version}); nothing was downloaded or submitted",
                       kind="kernel_error")


def latest_version(api, ref: str, retry: Retry = DEFAULT_RETRY) -> int:
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    request = ApiGetKernelRequest()
    request.user_name, request.kernel_slug = ref.split("/", 1)

    def read():
        with api.build_kaggle_client() as client:
            return client.kernels.kernels_api_client.get_kernel(request)

    response = _kernel_call(f"reading the kernel {ref}", read, f"kernel {ref}", retry)
    version = response.metadata.current_version_number if response.metadata else None
    if not version:
        raise KaggleFault(f"Kaggle names no version of {ref}", kind="not_found")
    return int(version)
