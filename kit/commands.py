"""The command names and the contract every command runs under, whichever way it is started (`facekit
COMMAND`, `python -m kit COMMAND`, `python -m kit.cv`, a --devices worker, a tuning worker).

It lives in the foundations so that any layer may name the commands (kit/kaggle/kernels.py checks a
kernel's commands) without importing the command line itself: the table holds module names, not modules.
The contract: a UserError (kit/errors.py) is printed as `error: <message>` on stderr with exit code 2,
Ctrl-C exits with 130, and anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

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


def run_module(command: str, function) -> int:
    """`python -m kit.MODULE ARGS` as `facekit COMMAND ARGS`: the same flags, the same contract."""
    if command in TRAINING_COMMANDS:
        flush_denormals_before_threads()
    return run(function, sys.argv[1:])
