"""`facekit kaggle SUBCOMMAND`: the kit on Kaggle's notebooks and GPUs (docs/kaggle.md).

    facekit kaggle bundle [--extras dlib] [--slug OWNER/SLUG] [--dry-run]   the kit as a dataset (kit/kaggle/bundle.py)
    facekit kaggle run [options] -- COMMAND ...                            run commands there (kit/kaggle/kernels.py)
    facekit kaggle output OWNER/SLUG [--version N]                         wait for a version, download its output
"""
from __future__ import annotations

import importlib

SUBCOMMANDS = {
    "bundle": ("kit.kaggle.bundle:main", "build the kit, its wheels and the folds as a dataset; upload it if changed"),
    "run": ("kit.kaggle.kernels:run_main", "run facekit commands in a Kaggle kernel; wait; download its runs"),
    "output": ("kit.kaggle.kernels:output_main", "wait for a pushed kernel version and download its output"),
}


def usage() -> str:
    lines = ["usage: facekit kaggle SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:8s} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`facekit kaggle SUBCOMMAND --help` shows its options; docs/kaggle.md the whole flow."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from kit.errors import UserError
    from kit.log import log

    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help", "help"):
        log(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise UserError(f"facekit kaggle has no subcommand {argv[0]!r}\n\n{usage()}")
    module, _, function = SUBCOMMANDS[argv[0]][0].partition(":")
    return getattr(importlib.import_module(module), function)(argv[1:])
