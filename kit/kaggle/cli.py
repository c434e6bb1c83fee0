"""The Kaggle commands' command lines: `facekit submit`, `facekit submissions`, and `facekit kaggle
SUBCOMMAND` (SUBCOMMANDS below), the kit on Kaggle's notebooks and GPUs (docs/kaggle.md). Each parses its
options and calls the library (kit/kaggle/submit.py, code_submission.py, bundle.py, datasets.py, remote.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit.errors import SubmissionError, SubmitError, UserError
from kit.kaggle.api import DEFAULT_POLLING, Polling, Services, add_competition_argument, owner_ref
from kit.kaggle.bundle import DEFAULT_EXTRAS, DEFAULT_SLUG, build_bundle
from kit.kaggle.code_submission import submit_kernel
from kit.kaggle.datasets import check_slug, upload_bundle
from kit.kaggle.kernel_output import finish
from kit.kaggle.kernels import DEFAULT_KERNEL, GPUS, KERNEL_POLLING, latest_version, split_commands
from kit.kaggle.remote import KernelSpec, run_on_kaggle
from kit.kaggle.scores import list_submissions
from kit.kaggle.submit import submit
from kit.kaggle.wheels import KAGGLE_GLIBC, KAGGLE_PYTHON, Target, WheelSource, default_platforms, read_image_file
from kit.log import log
from kit.options import parse_duration


# ----------------------------------------------------------------------------- command line
def submit_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit submit", description="Validate a submission file, submit it, "
                                     "wait for its public score and record it in submissions/ledger.csv.")
    parser.add_argument("file", nargs="?", help="submissions/NAME.csv (its CV score is read from NAME.json)")
    parser.add_argument("--kernel", metavar="OWNER/SLUG", help="a code competition: submit this kernel's output "
                        "(`facekit kaggle run`) instead of a file")
    parser.add_argument("--version", type=int, help="with --kernel: the kernel version whose output is submitted")
    parser.add_argument("--file-name", default="submission.csv",
                        help="with --kernel: the output file Kaggle scores (default: %(default)s)")
    parser.add_argument("-m", "--message", help="submission description (default: NAME and its CV score)")
    add_competition_argument(parser)
    parser.add_argument("--sample", help="sample_submission.csv to validate against (default: found or fetched)")
    parser.add_argument("--dry-run", action="store_true", help="validate and check the ledger; upload nothing")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the score")
    parser.add_argument("--force", action="store_true", help="submit even if the ledger has this file already")
    parser.add_argument("--poll-timeout", type=parse_duration, default=DEFAULT_POLLING.timeout,
                        help="how long to wait for the score, e.g. 90s, 30m (default: %(default)ss)")
    parser.add_argument("--poll-interval", type=parse_duration, default=DEFAULT_POLLING.interval,
                        help="first wait between checks; later waits grow to 60s (default: %(default)ss)")
    args = parser.parse_args(argv)
    services = Services(polling=Polling(interval=args.poll_interval, timeout=args.poll_timeout))
    if (args.file is None) == (args.kernel is None) or (args.kernel is None) != (args.version is None):
        parser.error("give a FILE, or --kernel OWNER/SLUG with --version N")
    try:
        if args.kernel:
            result = submit_kernel(args.kernel, args.version, args.message, args.competition,
                                   file_name=args.file_name, sample=args.sample, dry_run=args.dry_run,
                                   wait=not args.no_wait, force=args.force, services=services)
        else:
            result = submit(args.file, args.message, args.competition, sample=args.sample, dry_run=args.dry_run,
                            wait=not args.no_wait, force=args.force, services=services)
    except SubmissionError as error:
        raise SubmissionError(f"{error}\nnothing was uploaded") from None
    return 1 if result.status == "error" else 0


def submissions_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit submissions", description="List submissions/ledger.csv, "
                                     "asking Kaggle for the scores of pending submissions.")
    parser.add_argument("--competition", help="only this competition's submissions")
    parser.add_argument("--no-refresh", action="store_true", help="do not ask Kaggle about pending submissions")
    parser.add_argument("--final", action="store_true",
                        help="propose the two final selections from the leaderboard estimates (never the public "
                             "scores), and say why")
    args = parser.parse_args(argv)
    list_submissions(args.competition, refresh=not args.no_refresh, final=args.final)
    return 0


# ----------------------------------------------------------------------------- facekit kaggle ...
def bundle_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="facekit kaggle bundle", description="Build the kit's wheel, the wheels of what it needs that Kaggle's "
        "image lacks, and the project's folds as a Kaggle dataset, and upload it as a new version when its content "
        "changed (docs/kaggle.md, 1).", epilog="The folder is .cache/kaggle-bundle/facekit-bundle/ under the project.")
    parser.add_argument("--extras", default=",".join(DEFAULT_EXTRAS),
                        help="the kit's extras to install, comma-separated, or none (default: %(default)s, what "
                             "best's default members need)")
    parser.add_argument("--slug", help=f"the dataset, [OWNER/]SLUG (default: <username>/{DEFAULT_SLUG})")
    parser.add_argument("--title", default="facekit bundle", help="the dataset's title (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="build the folder; upload nothing")
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR",
                        help="a folder of wheels for pip to take wheels from besides the index (repeatable)")
    parser.add_argument("--python-version", default=KAGGLE_PYTHON, help="Kaggle's Python (default: %(default)s)")
    parser.add_argument("--platform", action="append", metavar="TAG",
                        help=f"wheel platform tags (repeatable; default: manylinux up to glibc "
                             f"2.{KAGGLE_GLIBC}, x86_64)")
    parser.add_argument("--kaggle-image", metavar="FILE",
                        help="`pip list --format=freeze` of a Kaggle notebook: what its image has, with versions")
    parser.add_argument("--include", action="append", default=[], metavar="NAME",
                        help="bundle this distribution even if Kaggle's image has it (repeatable)")
    parser.add_argument("--notes", help="the dataset version's notes")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip() and e.strip().lower() != "none"]
    services = Services()
    dataset = owner_ref(args.slug, DEFAULT_SLUG, dry_run=args.dry_run, services=services)
    check_slug(dataset)
    target = Target(args.python_version, tuple(args.platform) if args.platform else default_platforms())
    image = read_image_file(Path(args.kaggle_image)) if args.kaggle_image else None
    wheels = WheelSource(target=target, find_links=tuple(Path(p) for p in args.find_links), image=image,
                         include=frozenset(args.include))
    bundle = build_bundle(dataset=dataset, extras=extras, wheels=wheels, title=args.title)
    if args.dry_run:
        log(f"dry run: {bundle.folder} is built; nothing uploaded (it would go to {dataset})")
        return 0
    upload_bundle(bundle, notes=args.notes, services=services)
    return 0


def add_polling_arguments(parser) -> None:
    parser.add_argument("--poll-interval", type=parse_duration, default=KERNEL_POLLING.interval,
                        help="first wait between status checks; later ones grow to 10 times it, at most 5 min "
                        "(default: %(default)ss)")
    parser.add_argument("--poll-timeout", type=parse_duration, default=KERNEL_POLLING.timeout,
                        help="how long to wait for the kernel, e.g. 9h (default: %(default)ss)")


def services_from(args) -> Services:
    longest = max(args.poll_interval, min(KERNEL_POLLING.max_interval, 10 * args.poll_interval))
    return Services(polling=Polling(interval=args.poll_interval, factor=KERNEL_POLLING.factor, max_interval=longest,
                                    timeout=args.poll_timeout))


def run_main(argv=None) -> int:
    argv = list(argv or [])
    options, words = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="facekit kaggle run",
        usage="facekit kaggle run [options] -- COMMAND [ARGS ...] [-- COMMAND [ARGS ...] ...]",
        description="Run facekit commands in a Kaggle script kernel with the bundle and the competition attached, "
        "wait for it, and download its output into runs/kaggle/<slug>/v<N>/ (docs/kaggle.md, 3).",
        epilog="example: facekit kaggle run -- best --time-limit 8h")
    parser.add_argument("--kernel", help=f"[OWNER/]SLUG of the kernel (default: <username>/{DEFAULT_KERNEL}); each "
                        "push is a new version")
    add_competition_argument(parser)
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
    spec = KernelSpec(kernel=args.kernel, competition=args.competition, gpu=args.gpu, internet=args.internet,
                      keep_checkpoints=args.keep_checkpoints, session_timeout=args.session_timeout)
    run_on_kaggle(split_commands(words), spec, wait=not args.no_wait, dry_run=args.dry_run,
                  services=services_from(args))
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
    services = services_from(args)
    version = args.version or latest_version(services, args.kernel)
    finish(services, args.kernel, version, force=args.force)
    return 0


SUBCOMMANDS = {
    "bundle": (bundle_main, "build the kit, its wheels and the folds as a dataset; upload it if changed"),
    "run": (run_main, "run facekit commands in a Kaggle kernel; wait; download its runs"),
    "output": (output_main, "wait for a pushed kernel version and download its output"),
}


def usage() -> str:
    lines = ["usage: facekit kaggle SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:8s} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`facekit kaggle SUBCOMMAND --help` shows its options; docs/kaggle.md the whole flow."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help", "help"):
        log(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise UserError(f"facekit kaggle has no subcommand {argv[0]!r}\n\n{usage()}")
    return SUBCOMMANDS[argv[0]][0](argv[1:])
