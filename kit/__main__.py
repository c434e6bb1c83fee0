"""The command line: `facekit COMMAND ...` (or `python -m kit COMMAND ...`, or `./run.sh COMMAND ...`).

Each command is a module's `main(argv) -> exit code`, a plain function Python code and tests call too;
this file only dispatches. The command names and the one contract for all of them (a UserError is
`error: ...` with exit code 2) are kit/commands.py's.
"""
from __future__ import annotations

import importlib
import sys

from kit.commands import COMMANDS, TRAINING_COMMANDS, flush_denormals_before_threads, run


def usage() -> str:
    lines = ["usage: facekit COMMAND [options]   (python -m kit ..., ./run.sh ...; ./run.sh test runs the tests)",
             "", "commands:"]
    lines += [f"  {name:12s} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`facekit COMMAND --help` shows a command's options and their defaults."]
    return "\n".join(lines)


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
