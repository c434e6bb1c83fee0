"""`python -m kit.best ARGS` is `facekit best ARGS`; started with FACEKIT_BEST_MEASURE in its environment, it is
the child process that times best's members on a GPU (kit/best/measure.py time_in_child)."""
import os

from kit.best import main
from kit.best.measure import MEASURE_ENV, child_main
from kit.commands import run_module

if __name__ == "__main__":
    raise SystemExit(run_module("best", (lambda argv: child_main()) if MEASURE_ENV in os.environ else main))
