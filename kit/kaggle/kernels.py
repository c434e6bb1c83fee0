"""`facekit kaggle run -- COMMAND ...`: facekit commands on Kaggle's machines, as a script kernel (the whole
flow: docs/kaggle.md, 3).

    facekit kaggle run -- best --time-limit 8h            # GPU T4 x2, no internet, the bundle attached
    facekit kaggle run --gpu p100 -- cv resnet18 --epochs 12 -- ensemble resnet18/x   # commands in order
    facekit kaggle output OWNER/SLUG --version 3          # wait for a pushed version, download its output

Here: the kernel folder (.cache/kaggle-kernels/<slug>/: kernel-metadata.json, and <slug>.py, which is
kit/kaggle/kernel_script.py with its CONFIG filled in), the push (KaggleApi.kernels_push), the status polled
with back-off, and the log. remote.py decides what is pushed (nothing while the project's folds differ from
the bundle's, or the bundle built here is not the one uploaded); kernel_output.py lays the output out in
runs/kaggle/<slug>/v<N>/ like local runs, so that `facekit ensemble` blends them with those.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from kit.commands import COMMANDS
from kit.errors import KaggleFault, SubmitError
from kit.files import write_json, write_text
from kit.kaggle.api import Polling, Services, Subject
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
    commands = [list(command) for between, command in itertools.groupby(words, lambda word: word == "--")
                if not between]
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
def kernel(ref: str, version: int | None = None) -> Subject:
    return Subject("kernel", ref if version is None else f"{ref} version {version}")


def push_kernel(services: Services, folder: Path, *, ref: str, session_timeout: float | None = None) -> tuple[int, str]:
    """Push the folder; return (version number, URL). An error or an invalid source in the answer is a
    KaggleFault: the client itself only prints them."""
    timeout = str(int(session_timeout)) if session_timeout else None
    what = f"pushing the kernel {ref}"
    response = services.send(what, lambda: services.client().kernels_push(str(folder), timeout=timeout), kernel(ref))
    if response is None:
        raise KaggleFault(f"{what}: no answer from Kaggle", kind="refused")
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


def kernel_status(services: Services, ref: str, version: int):
    return services.call(f"reading the status of {ref} version {version}",
                         lambda: services.client().kernels_status(f"{ref}/{version}"), kernel(ref, version))


def wait_for_kernel(services: Services, ref: str, version: int):
    """Poll until the version is COMPLETE, ERROR or cancelled; return Kaggle's last answer. Each state
    change is logged once; the waits grow as the services' polling (default KERNEL_POLLING) says."""
    seen = []

    def read():
        response = kernel_status(services, ref, version)
        if not seen or seen[-1] != response.status.name:
            seen.append(response.status.name)
            log(f"{ref} version {version}: {response.status.name.lower()}")
        return response

    response, finished = services.poll(read, lambda response: response.status.name in TERMINAL,
                                       default=KERNEL_POLLING)
    if not finished:
        timeout = (services.polling or KERNEL_POLLING).timeout
        raise KaggleFault(f"{ref} version {version} is still {seen[-1].lower()} after {timeout:.0f}s; "
                          f"`facekit kaggle output {ref} --version {version}` waits for it again", kind="timeout")
    return response


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


def log_tail(services: Services, ref: str, version: int, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_text(services.call(f"reading the log of {ref} version {version}",
                                      lambda: services.client().kernels_logs(f"{ref}/{version}"), kernel(ref)))
    except KaggleFault as fault:
        return f"(the log could not be read: {fault})"
    kept = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(kept) if kept else "(the log is empty)"


def failed(services: Services, ref: str, version: int, response) -> KaggleFault:
    status = response.status.name.lower()
    reason = response.failure_message or "no failure message given"
    return KaggleFault(f"{ref} version {version} ended {status} on Kaggle: {reason}\n"
                       f"--- the last lines of its log ---\n{log_tail(services, ref, version)}\n---\n"
                       f"(the whole log: kaggle kernels logs {ref}/{version}); nothing was downloaded or submitted",
                       kind="kernel_error")


def latest_version(services: Services, ref: str) -> int:
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    request = ApiGetKernelRequest()
    request.user_name, request.kernel_slug = ref.split("/", 1)

    def read():
        with services.client().build_kaggle_client() as client:
            return client.kernels.kernels_api_client.get_kernel(request)

    response = services.call(f"reading the kernel {ref}", read, kernel(ref))
    version = response.metadata.current_version_number if response.metadata else None
    if not version:
        raise KaggleFault(f"Kaggle names no version of {ref}", kind="not_found")
    return int(version)
