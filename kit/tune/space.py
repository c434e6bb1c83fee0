"""The tuner's search space: defaults by starting weights, a JSON file to change it, and Optuna suggestions."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from kit.config import CHOICES, TUNABLE_FIELDS, TrainConfig, value_type
from kit.errors import ConfigError, UserError
from kit.models import check_model_config
from kit.options import read_json_option

# The kinds of tunable field, from TrainConfig's metadata: a choice (or a switch), an integer, a number.
CHOICE_FIELDS = tuple(name for name in TUNABLE_FIELDS if name in CHOICES or value_type(name) is bool)
INT_FIELDS = tuple(name for name in TUNABLE_FIELDS if name not in CHOICE_FIELDS and value_type(name) is int)
FLOAT_FIELDS = tuple(name for name in TUNABLE_FIELDS if name not in CHOICE_FIELDS and value_type(name) is float)
FROZEN_PHASE_FIELDS = ("lr_head", "unfreeze_epoch")   # only mean something when starting pretrained


def default_space(cfg: TrainConfig) -> dict:
    """The default search space for the resolved configuration `cfg`.

    Starting pretrained (resnet18 or dlib_age): the heads' rate while the backbone is frozen, the rate of
    everything once it is unfrozen, and when to unfreeze. From random init (scratch, or resnet18
    --no-pretrained) there is no frozen phase: one learning rate, the schedule and the augmentation
    matter most at the short epoch budgets tuning affords (weight decay is left out: the default 0 is not
    on a log scale; add it with --space together with --optimizer adamw).
    """
    if cfg.starts_pretrained():
        return {"lr_head": {"low": 1e-5, "high": 1e-2, "log": True},
                "lr_backbone": {"low": 1e-6, "high": 1e-2, "log": True},
                "unfreeze_epoch": {"low": 0, "high": cfg.epochs}}
    return {"lr_backbone": {"low": 1e-4, "high": 1e-2, "log": True},
            "schedule": {"choices": list(CHOICES["schedule"])},
            "augment": {"choices": list(CHOICES["augment"])}}


def load_space(path: str | os.PathLike, cfg: TrainConfig) -> dict:
    """The default space updated by a JSON file: {"field": {"low", "high", "log"?, "step"?} | {"choices"} | null}.

    A null entry removes a field from the default space. Errors name the file and the key.
    """
    path = Path(path)
    loaded = read_json_option("--space", path)
    if not isinstance(loaded, dict):
        raise ConfigError(f"--space {path}: must be a JSON object of field -> range, e.g. "
                        '{"lr_backbone": {"low": 1e-4, "high": 1e-2, "log": true}}')
    space = default_space(cfg)
    for key, entry in loaded.items():
        if entry is None:
            space.pop(key, None)
        else:
            space[key] = entry
    check_space(space, cfg, source=f"--space {path}")
    return space


def check_space(space: dict, cfg: TrainConfig, *, source: str = "search space") -> None:
    tunable = FLOAT_FIELDS + INT_FIELDS + CHOICE_FIELDS
    if not space:
        raise ConfigError(f"{source}: the search space is empty")
    for key, entry in space.items():
        where = f"{source}: {key!r}"
        if key not in tunable:
            raise ConfigError(f"{where}: not a tunable field; tunable: {', '.join(tunable)}")
        if key in FROZEN_PHASE_FIELDS and not cfg.starts_pretrained():
            raise ConfigError(f"{where}: only tuned when the model starts pretrained; from random init there is "
                            "no frozen phase (lr_head follows lr_backbone)")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be an object like {{\"low\": 1, \"high\": 2}} or {{\"choices\": [...]}}")
        allowed = {"choices"} if key in CHOICE_FIELDS else {"low", "high", "log", "step"}
        unknown = sorted(set(entry) - allowed)
        missing = sorted(allowed - set(entry) - {"log", "step"})
        if unknown or missing:
            raise ConfigError(f"{where}: " + (f"unknown key(s) {unknown}" if unknown else f"missing {missing}")
                            + f" (allowed: {sorted(allowed)})")
        if key in CHOICE_FIELDS:
            values = entry["choices"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: choices must be a non-empty list")
        else:
            low, high = entry["low"], entry["high"]
            kinds = (int,) if key in INT_FIELDS else (int, float)
            for name, value in (("low", low), ("high", high), ("step", entry.get("step", 1))):
                if isinstance(value, bool) or not isinstance(value, kinds):
                    raise ConfigError(f"{where}: {name} must be {'an integer' if key in INT_FIELDS else 'a number'}"
                                    f", got {value!r}")
            if not isinstance(entry.get("log", False), bool):
                raise ConfigError(f"{where}: log must be true or false")
            if not low < high:
                raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
            if entry.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0")
            if entry.get("step", 1) <= 0:
                raise ConfigError(f"{where}: step must be positive")
            if entry.get("log") and "step" in entry:
                raise ConfigError(f"{where}: give either log or step, not both")
            values = [low, high]
        for value in values:  # every endpoint and choice must be a valid training option
            try:
                check_model_config(dataclasses.replace(cfg, **{key: value}))
            except (UserError, TypeError) as err:
                raise ConfigError(f"{where}: {value!r} is not a valid value: {err}") from None


def suggest(trial, space: dict) -> dict:
    params = {}
    for key, entry in space.items():
        if "choices" in entry:
            params[key] = trial.suggest_categorical(key, entry["choices"])
        elif key in INT_FIELDS:
            params[key] = trial.suggest_int(key, entry["low"], entry["high"], log=entry.get("log", False),
                                            step=entry.get("step", 1))
        else:
            params[key] = trial.suggest_float(key, entry["low"], entry["high"], log=entry.get("log", False),
                                              step=entry.get("step"))
    return params


def in_space(value, entry: dict) -> bool:
    if "choices" in entry:
        return value in entry["choices"]
    return value is not None and entry["low"] <= value <= entry["high"]


def describe_space(space: dict, baseline: dict) -> str:
    lines = []
    for key, entry in space.items():
        if "choices" in entry:
            text = "one of " + ", ".join(map(str, entry["choices"]))
        else:
            scale = "log" if entry.get("log") else ("int" if key in INT_FIELDS else "uniform")
            text = f"{scale} {entry['low']:g} .. {entry['high']:g}"
            text += f" step {entry['step']:g}" if "step" in entry else ""
        lines.append(f"  {key:16s} {text:36s} baseline {baseline.get(key)!r}")
    return "\n".join(lines)
