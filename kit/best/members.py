"""The members `best` blends: each a model with its measured recipe, and options of its own.

    parse_model_spec("dlib_age:lr_backbone=1e-3")  -> ("dlib_age", {"lr_backbone": 0.001})
    member_config(cfg, "dlib_age", {"lr_backbone": 0.001}, given=set(), name="best-60m", sample=False)

Each model starts from its RECIPE (measured by cross-validation here, docs/experiments.md); options the
user gave override it, and a --models entry MODEL:FIELD=VALUE overrides it for that member only, so one
model can join the blend twice, differently trained.
"""
from __future__ import annotations

import dataclasses
import re

from kit.config import MEMBER_FIELDS, TrainConfig, check_types, value_type
from kit.errors import ConfigError
from kit.models import check_model_config

# Each recipe is the best one measured on the real data; the figures behind every choice are in
# docs/experiments.md, "The figures behind the code's defaults".
RECIPES = {
    "resnet18": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", lr_backbone=2e-3,
                     augment="flip", age_loss="mse", age_target="bins", tta=True),
    "scratch": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", lr_backbone=3e-3,
                    augment="light", tta=True),
    # dlib's pretrained age network: its learning rates are config.PRETRAINED_DEFAULTS'. Its stem and first
    # block are frozen and cached: the same score, trained faster.
    "dlib_age": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment="flip", age_loss="mse",
                     age_target="bins", tta=True, frozen_trunk=1),
    # dlib's face-recognition network: dlib_age's recipe at 112 px, its stem and first 7 of 14 blocks frozen
    # and cached: a better score than trained whole, and faster.
    "dlib_face": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment="flip", age_loss="mse",
                      age_target="bins", tta=True, size=112, frozen_trunk=7),
    "dlib_face_emb": dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment="flip", age_loss="mse",
                          age_target="bins", tta=True, size=112),
}
# Epochs past which a model's held-out score stops rising (it overfits, on any machine; the figures are in
# docs/experiments.md): time a capped model does not need goes to the other members and the spares, never
# to more epochs.
EPOCH_CAPS = {"dlib_age": 6, "dlib_face": 7}
# Two networks that saw faces for different tasks (identity, age) blend better than either alone. The
# strongest comes first: if the time is short, the last member is the one left out.
DEFAULT_MODELS = "dlib_face,dlib_age"
# Members that join only when the plan finds the time for them, once the members are at their caps: a second
# seed of each (a second dlib_age seed added 0.002 to the blend on fold 0). The cheaper comes first: when
# only one fits, it is the one kept.
DEFAULT_SPARES = "dlib_age:seed=1,dlib_face:seed=1"
LEARNING_RATE_FIELDS = ("lr_head", "lr_backbone", "unfreeze_epoch")
# What the plan decides, never a member's own: its epochs (from the time), and what every member shares.
PER_MEMBER = tuple(name for name in MEMBER_FIELDS if name != "epochs")


def parse_value(field: str, text: str, spec: str):
    """FIELD=VALUE's text as the field's type, or a ConfigError naming the entry."""
    kind = value_type(field)
    try:
        if kind is bool:
            value = {"true": True, "false": False}[text.lower()]
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
        else:
            value = text
    except (KeyError, ValueError):
        names = {bool: "true or false", int: "an integer", float: "a number"}
        raise ConfigError(f"--models {spec!r}: {field}={text!r}: must be {names[kind]}") from None
    check_types({field: value}, source=f"--models {spec!r}")
    return value


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """'dlib_age' or 'dlib_age:lr_backbone=5e-4:size=80' -> ('dlib_age', {'lr_backbone': 0.0005, 'size': 80})."""
    model, *options = spec.split(":")
    overrides = {}
    for option in options:
        field, equals, text = option.partition("=")
        if not equals or field not in PER_MEMBER:
            raise ConfigError(f"--models {spec!r}: {option!r} is not FIELD=VALUE with a per-model training field "
                              f"({', '.join(sorted(PER_MEMBER))})")
        overrides[field] = parse_value(field, text, spec)
    return model.strip(), overrides


def member_name(name: str, overrides: dict) -> str:
    """The run name of a blend member: the submission's name, plus its overrides if it has any (made safe
    for a folder name: a weights path's slashes become underscores)."""
    return "-".join([name, *(re.sub(r"[^A-Za-z0-9._-]", "_", f"{field}{value}") for field, value in overrides.items())])


def recipe_config(cfg: TrainConfig, model: str, given: set[str], *, sample: bool = False) -> TrainConfig:
    """`cfg` for `model` with the model's recipe filled in where the user gave nothing.

    The recipe's learning rates were measured from random init; from pretrained weights the
    pretrained defaults (TrainConfig.resolved) apply instead."""
    recipe = dict(RECIPES.get(model, {}))
    resolved = dataclasses.replace(cfg, model=model).resolved(sample=sample)
    if resolved.starts_pretrained():
        recipe = {k: v for k, v in recipe.items() if k not in LEARNING_RATE_FIELDS}
    return dataclasses.replace(cfg, model=model, **{k: v for k, v in recipe.items() if k not in given})


def member_config(cfg: TrainConfig, model: str, overrides: dict, *, given: set[str], name: str,
                  sample: bool) -> TrainConfig:
    """A member's whole configuration: the recipe, what the user gave, its own overrides; checked."""
    member = dataclasses.replace(recipe_config(cfg, model, given | set(overrides), sample=sample),
                                 name=member_name(name, overrides), **overrides)
    check_model_config(member)
    return member
