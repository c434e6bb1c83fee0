"""The command line: `facekit COMMAND ...` (or `python -m kit COMMAND ...`, or `./run.sh COMMAND ...`).

Each command is a module's `main(argv) -> exit code`, a plain function Python code and tests call too;
this file only dispatches, and keeps one contract for all of them: a UserError (kit/errors.py) is
printed as `error: <message>` on stderr with exit code 2, Ctrl-C exits with 130, and anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "cv": ("kit.cv", "K-fold cross-validation of one model: out-of-fold score and test predictions"),
    "tune": ("kit.tune.__main__", "Optuna search over learning rates, the unfreeze epoch and more"),
    "ensemble": ("kit.ensemble", "blend runs into a validated submission CSV"),
    "best": ("kit.best", "spend a time budget on the best submission (cv + ensemble)"),
    "bench": ("kit.bench", "training and inference images/s: kit vs compute ceiling vs PIL loader"),
    "download": ("kit.kaggle.download", "download the competition files through the Kaggle API"),
    "submit": ("kit.kaggle.cli:submit_main", "validate, upload, wait for the public score, record in the ledger"),
    "submissions": ("kit.kaggle.cli:submissions_main", "list the ledger and refresh pending submissions"),
    "sample": ("kit.sample", "write the synthetic sample competition to a folder"),
    "kaggle": ("kit.kaggle.cli", "Kaggle's notebooks and GPUs: `kaggle bundle` the kit, `kaggle run -- COMMAND`"),
}
# Commands that train: the CPU's flush-to-zero mode must be on before torch starts its threads.
TRAINING_COMMANDS = ("cv", "tune", "best", "bench")


def usage() -> str:
    lines = ["usage: facekit COMMAND [options]   (python -m kit ..., ./run.sh ...; ./run.sh test runs the tests)",
             "", "commands:"]
    lines += [f"  {name:12s} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`facekit COMMAND --help` shows a command's options and their defaults."]
    return "\n".join(lines)


def flush_denormals_before_threads() -> None:
    """The CPU's flush-to-zero mode is per thread, and threads take it from the one that starts them: set
    it before torch starts its thread pool, or it reaches only the main thread (kit/device.py)."""
    import torch

    from kit.device import flush_denormals_to_zero

    flush_denormals_to_zero(torch.device("cpu"))


def run(function, argv=None) -> int:
    """Call a command's main(argv) under the command-line contract."""
    from kit.errors import UserError

    try:
        return function(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


def command_function(name: str):
    target = COMMANDS[name][0]
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function or "main")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command in TRAINING_COMMANDS:
        flush_denormals_before_threads()
    return run(_with_banner(command_function(command)), rest)


def _with_banner(function):
    """In a Kaggle notebook, a command first says where its data and outputs are (kit/notebook.py)."""
    def command(argv):
        from kit.log import log
        from kit.notebook import banner

        line = banner()
        if line:
            log(line)
        return function(argv)
    return command


if __name__ == "__main__":
    raise SystemExit(main())
