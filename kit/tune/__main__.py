"""`python -m kit.tune ...` (the same as `facekit tune ...`), and the entry of the tuner's worker processes."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from kit.log import tagged, warn
from kit.options import add_config_arguments, add_model_argument, config_from_args, model_from_args, parse_duration
from kit.tune.workers import WORKER_ENV, run_worker, stop_on_sigterm, worker_devices


def build_parser() -> argparse.ArgumentParser:
    from kit import tune

    parser = argparse.ArgumentParser(prog="facekit tune", description=tune.__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, required=True,
                        help="trials to add to the study (0: only rewrite the report)")
    add_model_argument(parser)
    parser.add_argument("--study", help="study name (default: MODEL-COMPETITION); files go to tuning/<study>/")
    parser.add_argument("--storage", help="Optuna RDB URL (postgresql://user:pass@host/db) shared by workers on "
                        "several machines, or a journal file path (default: tuning/<study>/journal.log)")
    parser.add_argument("--folds-per-trial", type=int, default=2,
                        help="folds each trial trains (the first N of the persisted folds; default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes on the study "
                        "(default: %(default)s)")
    parser.add_argument("--time-limit", type=parse_duration,
                        help="wall time, e.g. 40m: no trial starts after it, a running one stops at its next epoch")
    parser.add_argument("--space", help="JSON file overriding the search space (see the printed default)")
    parser.add_argument("--pruner", choices=("median", "none"), default="median", help="(default: %(default)s)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not start a new study with the configuration as given")
    parser.add_argument("--heartbeat-interval", type=int, default=30,
                        help="seconds between a trial's heartbeats (default: %(default)s)")
    parser.add_argument("--grace-period", type=int, default=120,
                        help="seconds without a heartbeat after which a running trial is failed (default: %(default)s)")
    parser.add_argument("--worker-index", type=int, default=0,
                        help="with workers on several machines: a different number on each (varies the sampler seed)")
    parser.add_argument("--run-worker", action="store_true", help=argparse.SUPPRESS)
    add_config_arguments(parser, skip={"name", "only_folds", "time_limit", "overwrite"})
    return parser


def worker_main() -> int:
    """A process started by spawn_workers: its spec is in the environment; every line it logs is tagged."""
    spec = json.loads(os.environ[WORKER_ENV])
    with tagged(f"w{spec['worker_index']}"):
        try:
            return run_worker(spec)
        except KeyboardInterrupt:
            return 130


def main(argv=None) -> int:
    from kit.data import locate
    from kit.device import announce_device
    from kit.models import check_model_config
    from kit.paths import Project
    from kit.tune import Study, tune
    from kit.tune.space import load_space

    argv = list(sys.argv[1:] if argv is None else argv)
    previous_handler = stop_on_sigterm()
    try:
        if argv == ["--run-worker"]:
            return worker_main()
        args = build_parser().parse_args(argv)
        cfg = config_from_args(args, model=model_from_args(args))
        announce_device(cfg.device, worker_devices(cfg.device, args.workers) if args.workers > 1 else None,
                        cfg.precision, cfg.num_threads)
        space = None
        if args.space:
            check_model_config(cfg)
            _, _, is_sample = locate(cfg.data, project_root=Project.at().root)
            space = load_space(args.space, cfg.resolved(sample=is_sample))
        try:
            study = Study(name=args.study, storage=args.storage, search_space=space, pruner=args.pruner,
                          baseline=args.baseline, heartbeat_interval=args.heartbeat_interval,
                          grace_period=args.grace_period, worker_index=args.worker_index)
            result = tune(cfg, trials=args.trials, study=study, folds_per_trial=args.folds_per_trial,
                          workers=args.workers, time_limit=args.time_limit)
        except KeyboardInterrupt:
            warn("interrupted: the study keeps every finished trial; run the command again to continue")
            return 130
        return result.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    from kit.commands import run_module

    raise SystemExit(run_module("tune", main))
