"""The command line: `python -m kit COMMAND ...` (or `./run.sh COMMAND ...`).

Each command is a module with a `main(argv)`; this file only dispatches.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "cv": ("kit.cv", "main", "K-fold cross-validation of one model: out-of-fold score and test predictions"),
    "tune": ("kit.tune", "main", "Optuna search over learning rates and the unfreeze epoch"),
    "ensemble": ("kit.ensemble", "main", "blend runs into a validated submission CSV"),
    "best": ("kit.best", "main", "spend a time budget on the best submission (cv + ensemble)"),
    "bench": ("kit.bench", "main", "training and inference images/s: kit vs compute ceiling vs PIL loader"),
    "download": ("kit.download", "main", "download the competition files through the Kaggle API"),
    "submit": ("kit.submit", "submit_main", "validate, upload, wait for the public score, record in the ledger"),
    "submissions": ("kit.submit", "submissions_main", "list the ledger and refresh pending submissions"),
    "sample": ("kit.sample", "main", "write the synthetic sample competition to a folder"),
}


TRAINING_COMMANDS = ("cv", "tune", "best", "bench")


def usage() -> str:
    lines = ["usage: python -m kit COMMAND [options]   (./run.sh COMMAND ...; ./run.sh test runs the tests)",
             "", "commands:"]
    lines += [f"  {name:12s} {text}" for name, (_, _, text) in COMMANDS.items()]
    lines += ["", "`python -m kit COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function, _ = COMMANDS[command]
    if command in TRAINING_COMMANDS:
        # Before torch starts its thread pool: the CPU's flush-to-zero mode is per thread, and threads
        # take it from the one that starts them. Set later, it reaches only the main thread.
        import torch

        from kit.train import flush_denormals_to_zero
        flush_denormals_to_zero(torch.device("cpu"))
    return getattr(importlib.import_module(module_name), function)(rest)


if __name__ == "__main__":
    raise SystemExit(main())
