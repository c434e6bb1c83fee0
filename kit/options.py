"""The command line's training options, derived from TrainConfig's fields and their metadata.

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, skip={"name"})       # every TrainConfig field as --field-name, and --params
    cfg = config_from_args(parser.parse_args(argv))   # defaults < --params file < options given

Every option defaults to None in argparse, so that "not given" is told apart from "given the default";
--help shows the dataclass's real default (or the rule that picks it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kit import cards
from kit.config import FIELDS, TrainConfig, check_types, flag, value_type
from kit.errors import ConfigError
from kit.log import warn


def parse_duration(text: str) -> float:
    """'90s', '45m', '1.5h' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = str(text).strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 45m or 1.5h") from None


def parse_fold_list(text: str) -> list[int]:
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers") from None


def parse_name_list(text: str) -> list[str]:
    """'cpu,cpu' or 'dlib_age/r1,dlib_face/r1' -> a list of names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list, e.g. cpu,cpu")
    return names


def read_json_option(option: str, path) -> object:
    """The JSON content of the file given to `option`, or a ConfigError naming the option and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{option} {path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{option} {path}: not valid JSON ({err})") from None


def shown_default(name: str) -> str:
    f = FIELDS[name]
    if f.metadata["shown_default"] is not None:
        return f.metadata["shown_default"]
    default = f.default
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"{default:g}" if isinstance(default, float) else str(default)


def add_config_arguments(parser: argparse.ArgumentParser, *, skip=()) -> None:
    """Every TrainConfig field but `model` and those in `skip` as an option, and --params."""
    group = parser.add_argument_group("training (defaults < --params file < options given; cv, bench and best "
                                      "put the model card's recipe over these defaults: docs/usage.md, \"Models\")")
    for name, f in FIELDS.items():
        if name == "model" or name in skip:
            continue
        meta = f.metadata
        kwargs: dict = dict(dest=name, default=None,
                            help=f"{meta['help']} (default: {shown_default(name)})".replace("%", "%%"))
        kind = value_type(name)
        if meta["cli"] == "flag":
            kwargs["action"] = "store_true"
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta["cli"] == "folds":
            kwargs["type"] = parse_fold_list
        elif meta["cli"] in ("devices", "names"):
            kwargs["type"] = parse_name_list
        elif meta["cli"] == "duration":
            kwargs["type"] = parse_duration
        else:
            kwargs["type"] = kind
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
        group.add_argument(flag(name), **kwargs)
    group.add_argument("--params", help="JSON file of TrainConfig fields: tuning/<study>/best.json, a run's "
                       "config.json, or a plain object of fields")


# Fields that say how one command ran (where, which folds, how long), not what it computes: a run's
# config.json given as --params leaves them out.
# (name, data, only_folds, devices, time_limit, overwrite: neither a result field nor a member's.)
RUN_CONTROL = tuple(name for name, f in FIELDS.items() if not f.metadata["result"] and not f.metadata["member"])


def params_from_file(path) -> dict:
    """The TrainConfig fields of a --params file, type-checked: best.json keeps them under "params", a
    run's config.json under "train"; anything else is read as a plain object of fields."""
    loaded = read_json_option("--params", path)
    from_run = isinstance(loaded, dict) and "train" in loaded and "params" not in loaded
    if isinstance(loaded, dict):
        loaded = loaded.get("params", loaded.get("train", loaded))
    if not isinstance(loaded, dict):
        raise ConfigError(f"--params {path}: expected a JSON object of TrainConfig fields")
    check_types(loaded, source=f"--params {path}")
    if from_run:
        # A run's recipe, not how that command ran: best saves each fold's share of the hour as
        # time_limit, which would cut the folds of a reproduction short.
        dropped = {name: loaded.pop(name) for name in RUN_CONTROL if name in loaded}
        dropped = {name: value for name, value in dropped.items() if value != FIELDS[name].default}
        if dropped:
            warn(f"--params {path}: not taken from the run (set them as options if wanted): "
                 + ", ".join(f"{name}={value}" for name, value in dropped.items()))
    return loaded


def given_fields(args: argparse.Namespace) -> dict:
    """The fields the user chose, from --params and the options given (the options win)."""
    values = params_from_file(args.params) if getattr(args, "params", None) else {}
    values.update({name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None})
    return values


def config_from_args(args: argparse.Namespace, **fixed) -> TrainConfig:
    """Defaults < --params file < explicit command-line options < `fixed` (those not None)."""
    values = given_fields(args)
    values.update({k: v for k, v in fixed.items() if v is not None})
    return TrainConfig.from_dict(values, source="options")


def add_model_argument(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    """--model, and where the command has always taken it so, the model as its first word too; their help lists
    the registered models from their cards."""
    if positional:
        parser.add_argument("model_word", nargs="?", metavar="MODEL", help=cards.listing())
    parser.add_argument("--model", help=cards.listing())


def model_from_args(args: argparse.Namespace) -> str | None:
    word, option = getattr(args, "model_word", None), args.model
    if word and option and word != option:
        raise ConfigError(f"the model is given twice, as {word!r} and as --model {option!r}")
    return word or option
