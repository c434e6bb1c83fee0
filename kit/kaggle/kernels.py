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

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KaggleFault, SubmitError
from kit.files import read_json, sha256_file, write_json, write_text
from kit.kaggle import bundle as bundles
from kit.kaggle.api import DEFAULT_RETRY, Retry, call_with_retry, connect, resolve_competition
from kit.kaggle.ledger import now_utc
from kit.kaggle.submit import Polling
from kit.log import log, warn
from kit.options import parse_duration
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
    from kit.__main__ import COMMANDS

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
                              f"{403 if fault.kind == 'forbidden' else 404}{bundles._said(fault)})",
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


# ----------------------------------------------------------------------------- the output
def download_output(api, ref: str, version: int, *, root=None, retry: Retry = DEFAULT_RETRY,
                    force: bool = False) -> Path:
    """Download a COMPLETE version's output into runs/kaggle/<slug>/v<N>/ (runs at <model>/<name>/, the rest
    under output/), made usable here: each run's data_dir points at this project's copy of the competition
    where it has one, and folds files the project lacks are added to folds/."""
    project = Project.at(root)
    slug = ref.split("/", 1)[1]
    dest = output_dir(slug, version, project.root)
    if (dest / RECORD_NAME).is_file() and not force:
        log(f"{dest}: downloaded before; nothing to do (--force downloads it again)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=dest.parent))
    try:
        raw = staging / "raw"

        def fetch():
            with contextlib.redirect_stdout(io.StringIO()):
                return api.kernels_output(f"{ref}/{version}", str(raw), force=True, quiet=True)

        files, _ = _kernel_call(f"downloading the output of {ref} version {version}", fetch,
                                f"kernel {ref} version {version}", retry)
        out = staging / "out"
        out.mkdir()
        log_file = raw / f"{slug}.log"
        if log_file.is_file():
            write_text(out / "kernel.log", log_text(log_file.read_text()))
            log_file.unlink()
        if (raw / "runs").is_dir():
            for model in sorted((raw / "runs").iterdir()):
                if model.is_dir() and model.name not in ("output", "kaggle"):
                    shutil.move(str(model), str(out / model.name))
            shutil.rmtree(raw / "runs")
        if raw.is_dir() and any(raw.iterdir()):
            shutil.move(str(raw), str(out / "output"))
        runs = [p.parent for p in sorted(out.glob("*/*/config.json")) if p.parent.parent.name != "output"]
        for run in runs:
            _localise(run, project)
        pushed = _read(kernels_home(project.root) / slug / f"v{version}.json")
        write_json(out / RECORD_NAME, {"kernel": ref, "version": version, "downloaded": now_utc(),
                                       "files": len(files), **pushed,
                                       "runs": [str(r.relative_to(out)) for r in runs]})
        if dest.exists():
            os.replace(dest, staging / "previous")
        os.replace(out, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _adopt_folds(dest / "output" / "folds", project)
    _say_what_came(dest, project)
    return dest


def _read(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def _localise(run: Path, project: Project) -> None:
    """Point a downloaded run's data_dir at this project's copy of its competition (data/<name>/), keeping
    Kaggle's as kaggle_data_dir, so that ensemble and submit find sample_submission.csv here."""
    from kit.data import find_competition_folder
    from kit.errors import DataError

    config = read_json(run / "config.json")
    if Path(config.get("data_dir", "")).is_dir():
        return
    local = project.data / str(config.get("competition", ""))
    try:
        folder = find_competition_folder(local) if local.is_dir() else None
    except DataError:
        folder = None
    if folder is not None:
        config["kaggle_data_dir"] = config["data_dir"]
        config["data_dir"] = str(folder.resolve())
        write_json(run / "config.json", config)


def _adopt_folds(folder: Path, project: Project) -> None:
    """Folds files the kernel made that the project lacks join folds/; a different one is only reported."""
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        mine = project.folds / path.name
        if not mine.exists():
            project.folds.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, mine)
            log(f"added {mine} (made by the kernel; local runs on it blend with the kernel's)")
        elif sha256_file(mine) != sha256_file(path):
            warn(f"warning: the kernel's {path.name} differs from {mine}: its runs cannot be blended with local runs "
                 "on that file")


def _say_what_came(dest: Path, project: Project) -> None:
    try:
        shown = dest.relative_to(project.runs)
    except ValueError:
        shown = dest
    runs = [p.parent for p in sorted(dest.glob("*/*/config.json")) if p.parent.parent.name != "output"]
    log(f"downloaded into {dest}: {len(runs)} run(s)")
    for run in runs:
        metrics = _read(run / "metrics.json").get("overall", {})
        score = f"  out-of-fold score {metrics['score']:.4f}" if "score" in metrics else "  (incomplete)"
        log(f"  {shown}/{run.parent.name}/{run.name}{score}")
    if (dest / "output" / "submission.csv").is_file():
        log(f"  {dest / 'output' / 'submission.csv'} (what a code competition would read)")
    if runs:
        log(f"next: facekit ensemble {shown}/{runs[0].parent.name}/{runs[0].name} MODEL/NAME   # with a local run")


def kernel_output_file(ref: str, version: int, file_name: str = "submission.csv", *, root=None, api=None,
                       retry: Retry = DEFAULT_RETRY) -> Path:
    """A file of a COMPLETE version's output (runs/kaggle/<slug>/v<N>/output/<file_name>), downloaded if
    it is not here yet."""
    slug = ref.split("/", 1)[1]
    path = output_dir(slug, version, root) / "output" / file_name
    if path.is_file():
        return path
    api = api or connect()
    response = kernel_status(api, ref, version, retry)
    if response.status.name != "COMPLETE":
        if response.status.name in TERMINAL:
            raise failed(api, ref, version, response, retry)
        raise SubmitError(f"{ref} version {version} is {response.status.name.lower()}, not complete: its output "
                          f"cannot be submitted yet (`facekit kaggle output {ref} --version {version}` waits for it)")
    download_output(api, ref, version, root=root, retry=retry, force=True)
    if not path.is_file():
        raise SubmitError(f"{ref} version {version} wrote no {file_name} (its output is in {path.parent.parent})")
    return path


# ----------------------------------------------------------------------------- run
@dataclass
class KaggleRun:
    ref: str
    version: int | None          # None on a dry run
    folder: Path                 # the kernel folder pushed
    output: Path | None          # runs/kaggle/<slug>/v<N>/, once downloaded


def run_on_kaggle(commands: list[list[str]], *, kernel: str | None = None, competition: str | None = None,
                  gpu: str = "t4x2", internet: bool = False, keep_checkpoints: bool = False,
                  session_timeout: float | None = None, wait: bool = True, dry_run: bool = False, root=None,
                  api=None, retry: Retry = DEFAULT_RETRY, polling: Polling = KERNEL_POLLING, sleep=time.sleep,
                  clock=time.monotonic) -> KaggleRun:
    """Push `commands` as a script kernel with the project's bundle attached, wait for it and download
    its output. Everything that can refuse (commands, folds, bundle) refuses before anything is sent."""
    project = Project.at(root)
    accelerator(gpu)
    slug = kernel.split("/")[-1] if kernel else DEFAULT_KERNEL
    check_kernel_slug(slug)
    competition = resolve_competition(competition)
    manifest = bundles.read_bundle(project.root)
    differences = bundles.folds_differences(project, manifest["folds"])
    if differences:
        raise SubmitError("the project's folds differ from the bundle's, so runs made on Kaggle would not blend "
                          "with the local ones:\n  - " + "\n  - ".join(differences)
                          + "\nrun `facekit kaggle bundle` to ship the current folds; nothing was pushed")
    record = bundles.uploaded(project.root).get(manifest["dataset"], {})
    if record.get("content_sha256") != manifest["content_sha256"] and not dry_run:
        raise SubmitError(f"the bundle in {bundles.bundle_folder(project.root)} (content "
                          f"{manifest['content_sha256'][:12]}) is not the one uploaded to {manifest['dataset']}; run "
                          "`facekit kaggle bundle` first; nothing was pushed")
    if not any(name.startswith(f"{competition}-") for name in manifest["folds"]):
        log(f"note: the bundle ships no folds file named for '{competition}'; the kernel reuses a shipped one of "
            "the same training ids, else makes its own (and the download adds it to folds/)")
    owner = kernel.split("/")[0] if kernel and "/" in kernel else None
    if owner is None:
        if dry_run:
            owner = os.environ.get("KAGGLE_USERNAME") or "USERNAME"
        else:
            api = api or connect()
            owner = api.config_values.get("username")
    ref = f"{owner}/{slug}"
    folder = kernels_home(project.root) / slug
    metadata = kernel_metadata(ref=ref, competition=competition, bundle=manifest["dataset"], gpu=gpu,
                               internet=internet)
    write_kernel_folder(folder, metadata, kernel_source(bundle=manifest, commands=commands,
                                                        keep_checkpoints=keep_checkpoints))
    shown = "; ".join("facekit " + " ".join(c) for c in commands)
    if dry_run:
        log(f"dry run: wrote {folder} ({metadata['code_file']}, kernel-metadata.json) to run `{shown}` on "
            f"{gpu}; nothing pushed")
        return KaggleRun(ref, None, folder, None)
    api = api or connect()
    if gpu == "p100":
        log("note: the client calls the P100 retired; Kaggle runs such a session on its default GPU (a T4)")
    version, url = push_kernel(api, folder, ref=ref, session_timeout=session_timeout)
    write_json(folder / f"v{version}.json", {"kernel": ref, "version": version, "pushed": now_utc(),
                                              "commands": commands, "gpu": gpu, "competition": competition,
                                              "bundle": manifest["dataset"],
                                              "bundle_content_sha256": manifest["content_sha256"]})
    log(f"pushed {ref} version {version} ({url}): `{shown}` on {gpu}")
    if not wait:
        log(f"not waiting; `facekit kaggle output {ref} --version {version}` waits for it and downloads its output")
        return KaggleRun(ref, version, folder, None)
    return KaggleRun(ref, version, folder, finish(api, ref, version, root=project.root, retry=retry,
                                                  polling=polling, sleep=sleep, clock=clock))


def finish(api, ref: str, version: int, *, root=None, retry: Retry = DEFAULT_RETRY, polling: Polling = KERNEL_POLLING,
           sleep=time.sleep, clock=time.monotonic, force: bool = False) -> Path:
    """Wait for a pushed version; download its output when COMPLETE, else raise Kaggle's failure."""
    response = wait_for_kernel(api, ref, version, polling=polling, retry=retry, sleep=sleep, clock=clock)
    if response.status.name != "COMPLETE":
        raise failed(api, ref, version, response, retry)
    return download_output(api, ref, version, root=root, retry=retry, force=force)


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


# ----------------------------------------------------------------------------- command line
def add_polling_arguments(parser) -> None:
    parser.add_argument("--poll-interval", type=parse_duration, default=KERNEL_POLLING.interval,
                        help="first wait between status checks; later ones grow to 10 times it, at most 5 min "
                        "(default: %(default)ss)")
    parser.add_argument("--poll-timeout", type=parse_duration, default=KERNEL_POLLING.timeout,
                        help="how long to wait for the kernel, e.g. 9h (default: %(default)ss)")


def polling_from(args) -> Polling:
    longest = max(args.poll_interval, min(KERNEL_POLLING.max_interval, 10 * args.poll_interval))
    return Polling(interval=args.poll_interval, factor=KERNEL_POLLING.factor, max_interval=longest,
                   timeout=args.poll_timeout)


def run_main(argv=None) -> int:
    argv = list(argv or [])
    options, words = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="facekit kaggle run", usage="facekit kaggle run [options] -- COMMAND "
                                     "[ARGS ...] [-- COMMAND [ARGS ...] ...]", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", help=f"[OWNER/]SLUG of the kernel (default: <username>/{DEFAULT_KERNEL}); each "
                        "push is a new version")
    parser.add_argument("--competition", help="competition slug (default: $KAGGLE_COMPETITION, else the project's)")
    parser.add_argument("--gpu", default="t4x2", help=f"{', '.join(GPUS)}, or a Kaggle machine shape such as NvidiaL4 "
                        "(default: %(default)s)")
    parser.add_argument("--internet", action="store_true", help="let the kernel reach the internet (default: off)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the *.pt checkpoints in the output")
    parser.add_argument("--session-timeout", type=parse_duration, help="Kaggle's limit on the run, e.g. 9h")
    parser.add_argument("--no-wait", action="store_true", help="push and return; `facekit kaggle output` fetches it")
    parser.add_argument("--dry-run", action="store_true", help="write the kernel folder; push nothing")
    add_polling_arguments(parser)
    args = parser.parse_args(options)
    if not words:
        parser.error("no command: put it after --, e.g. facekit kaggle run -- best --time-limit 8h")
    run_on_kaggle(split_commands(words), kernel=args.kernel, competition=args.competition, gpu=args.gpu,
                  internet=args.internet, keep_checkpoints=args.keep_checkpoints,
                  session_timeout=args.session_timeout, wait=not args.no_wait, dry_run=args.dry_run,
                  polling=polling_from(args))
    return 0


def output_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit kaggle output", description="Wait for a pushed kernel version "
                                     "and download its output into runs/kaggle/<slug>/v<N>/.")
    parser.add_argument("kernel", help="OWNER/SLUG")
    parser.add_argument("--version", type=int, help="the version (default: the kernel's latest)")
    parser.add_argument("--force", action="store_true", help="download again even if it is here")
    add_polling_arguments(parser)
    args = parser.parse_args(argv)
    if args.kernel.count("/") != 1:
        raise SubmitError(f"{args.kernel}: a kernel is OWNER/SLUG")
    api = connect()
    version = args.version or latest_version(api, args.kernel)
    finish(api, args.kernel, version, polling=polling_from(args), force=args.force)
    return 0
