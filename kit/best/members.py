"""The members `best` blends: each a model with its card's recipe, and options of its own.

    parse_model_spec("dlib_age:lr_backbone=1e-3")  -> ("dlib_age", {"lr_backbone": 0.001})
    member_config(cfg, "dlib_age", {"lr_backbone": 0.001}, given=set(), name="best-60m", sample=False)

Each model starts from its card (kit/models/card.py: its input size, the recipe measured by cross-validation
here, its weights' frozen trunk); options the user gave override it, and a --models entry MODEL:FIELD=VALUE
overrides it for that member only, so one model can join the blend twice, differently trained. The default
members are the cards ranked for the device at hand.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from kit.config import MEMBER_FIELDS, TrainConfig, check_types, value_type
from kit.device import on_gpus
from kit.errors import ConfigError
from kit.models import CARDS, card, check_model_config, default_members, recipe_config

# Epochs past which a model's held-out score stops rising (it overfits, on any machine): its card's epoch cap.
# Time a capped model does not need goes to the other members and the spares, never to more epochs.
EPOCH_CAPS = {name: c.epoch_cap for name, c in CARDS.items() if c.epoch_cap}
# The cards ranked for a device. On a CPU: dlib_face then dlib_age, two networks that saw faces for different
# tasks (identity, age), which blend better than either alone; the strongest comes first, so that if the time
# is short, the last member is the one left out. On a GPU: the ImageNet backbones its cards rank
# (kit/models/torchvision_models.py says why), when their weights can be had there.
CPU_MODELS = default_members("cpu")


def default_models(device_type: str, weights_found: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """(members, spares) of best when --models and --spares are not given. Spares join, in order, only in
    time the members do not need once they are at their caps. On a CPU: first a member again at its weights'
    native size where that is larger (dlib_face at 150 px: beside the 112 px one, +0.005 over the members
    on fold 0, where seeds added 0.000-0.002), then a second seed of each member, then a third, the cheaper
    first (a faster CPU, which has the members at their caps in a third of an hour, fills the rest with them
    rather than with epochs past the caps). On a GPU the CPU's members, face-pretrained and installed. A GPU
    whose ImageNet weights cannot be had (an offline Kaggle kernel) keeps the CPU's members: from random init
    those backbones would train far below the face networks."""
    cheap_first = sorted(CPU_MODELS, key=lambda name: card(name).gmac)
    gpu_models = default_members(device_type) if device_type != "cpu" else []
    if gpu_models and all(weights_found(name) for name in gpu_models):
        return gpu_models, cheap_first
    native = [f"{name}:size={card(name).native_size}" for name in CPU_MODELS if card(name).native_size]
    return list(CPU_MODELS), native + [f"{name}:seed={seed}" for seed in (1, 2) for name in cheap_first]


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


def member_config(cfg: TrainConfig, model: str, overrides: dict, *, given: set[str], name: str,
                  sample: bool) -> TrainConfig:
    """A member's whole configuration: the recipe, what the user gave, its own overrides; checked."""
    recipe = recipe_config(cfg, model, given | set(overrides), sample=sample,
                           on_gpu=on_gpus(cfg.device, cfg.devices))
    member = dataclasses.replace(recipe, name=member_name(name, overrides), **overrides)
    check_model_config(member)
    return member
