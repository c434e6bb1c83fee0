"""TrainConfig: every training choice in one dataclass, passed explicitly.

Each field says in its metadata what it is: its help text, its choices or range, whether it changes
what a run computes (a "result" field, compared before a run directory is resumed), whether the tuner
may search it and whether `best --models MODEL:FIELD=VALUE` may set it for one member. The command-line
options (kit/options.py), `check_config`, the tuner's space (kit/tune/space.py) and best's member
overrides are all derived from it, so a new field is written once, here.

`config.json` in a run directory is this dataclass written out; `--params FILE.json` overrides fields.
What depends on the model comes from its card (kit/models/card.py, read through kit/cards.py): `resolved()`
takes the learning rates of its pretrained weights (resnet18's are the original report's: 10 frozen epochs
with the heads at 1e-4, then everything at 1e-5) and its epoch cap. From random init those rates are far too
small (docs/experiments.md, "The figures behind the code's defaults"), so `resolved()` switches to from-scratch
defaults (no frozen phase, lr 1e-3) when the weights are random, unless the user set the learning rates
explicitly.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from kit import cards
from kit.errors import ConfigError

# Models whose pretrained weights a package installs (their cards say so): the default even on the sample data.
INSTALLED_WEIGHTS = cards.INSTALLED
FROM_SCRATCH_LR = 1e-3
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")   # run and study names: one folder, never hidden
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# The synthetic sample is a demo of the whole flow, not a benchmark: fewer epochs, so that a first
# `./run.sh cv resnet18` on a fresh clone ends in about two minutes on 2 CPU cores.
EPOCHS, SAMPLE_EPOCHS = 20, 4


def option(default, help: str, *, choices: tuple | None = None, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, result: bool = True, tunable: bool = False,
           member: bool = True, shown_default: str | None = None, cli: str | None = None):
    """A TrainConfig field with what the rest of the kit needs to know about it.

    low/high (with low_open/high_open for an open end): the allowed range of a number.
    result: the value changes what a run computes (False: where or how fast it runs).
    tunable: the tuner may search it. member: `best --models MODEL:FIELD=VALUE` may set it.
    shown_default: the default as --help shows it, where None stands for a rule.
    cli: how the command line takes it, if not by its type: "folds" (0,2), "duration" (45m), "flag"."""
    metadata = dict(help=help, choices=choices, low=low, high=high, low_open=low_open, high_open=high_open,
                    result=result, tunable=tunable, member=member, shown_default=shown_default, cli=cli)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


UNIT = dict(low=0, high=1, high_open=True)                      # [0, 1)
RATE = dict(low=0, high=1, low_open=True, high_open=True)       # (0, 1)


@dataclass
class TrainConfig:
    model: str = option("resnet18", "registered model name (see `facekit cv --help`)", member=False)
    name: str | None = option(None, "run directory name under runs/<model>/", result=False, member=False,
                              shown_default="the competition's name")
    data: str | None = option(None, "competition folder (with train.csv), its parent, or the Kaggle zip",
                              result=False, member=False, shown_default="data/<slug>/ if downloaded, else the sample")
    folds: int = option(5, "number of folds", low=2, member=False)
    fold_seed: int = option(42, "seed of the folds file: runs on the same folds can be blended", low=0, member=False)
    only_folds: list[int] | None = option(None, "comma-separated folds to run, e.g. 0,2", result=False, member=False,
                                          shown_default="all", cli="folds")
    seed: int = option(42, "seed for initialisation, shuffling and augmentation (not the folds)", low=0)
    epochs: int | None = option(None, "epochs per fold", low=1,
                                shown_default=f"{EPOCHS}, or the model's epoch cap; {SAMPLE_EPOCHS} on the synthetic "
                                              "sample")
    size: int = option(64, "training resolution in pixels (images are cached at this size)", low=16, high=1024,
                       tunable=True, shown_default="64; in cv, bench and best the model's input size, listed with "
                                                       "the model option")
    batch_size: int = option(64, "training batch size", low=2, tunable=True,
                             shown_default="64; in cv, bench and best on GPUs the model card's GPU batch where "
                                           "measured (dlib_face, dlib_age: 256, with the learning rates not given x2)")
    lr_head: float | None = option(None, "heads' learning rate while the backbone is frozen", **RATE, tunable=True,
                                   shown_default="per model when pretrained; lr-backbone from random init")
    lr_backbone: float | None = option(None, "learning rate of all layers once unfrozen", **RATE, tunable=True,
                                       shown_default=f"per model when pretrained; {FROM_SCRATCH_LR:g} from random init")
    unfreeze_epoch: int | None = option(None, "epoch at which the backbone starts training", low=0, tunable=True,
                                        shown_default="per model when pretrained; 0 from random init")
    optimizer: str = option("adam", "optimizer", choices=("adam", "adamw"), tunable=True)
    weight_decay: float = option(0.0, "weight decay", low=0, tunable=True)
    schedule: str = option("constant", "learning-rate schedule (onecycle warms up for 30% of the steps)",
                           choices=("constant", "onecycle", "cosine"), tunable=True)
    warmup_epochs: float = option(1.0, "linear warm-up of the cosine schedule, in epochs", low=0, tunable=True)
    age_loss_weight: float = option(1.0, "loss = CE(gender) + w * age loss (kit/age.py)", low=0, tunable=True)
    age_target: str = option("regression", "regression on the standardised age, or a label distribution over "
                             "one-year bins", choices=("regression", "bins"), tunable=True)
    age_loss: str = option("l1", "l1 or mse on the (expected) standardised age", choices=("l1", "mse"), tunable=True)
    label_smoothing: float = option(0.0, "label smoothing of the gender cross-entropy", **UNIT, tunable=True)
    ema_decay: float = option(0.0, "moving average of the weights, e.g. 0.998 (0: off)", **UNIT, tunable=True)
    stem: str = option("standard", "resnet18's stem: standard (/4), or small (3x3 stride 1, /2) for inputs under "
                       "~96 px", choices=("standard", "small"), tunable=True)
    augment: str = option("light", "training augmentation", choices=("none", "flip", "light", "strong"),
                          tunable=True)
    tta: bool = option(False, "average each prediction with that of the horizontally flipped image", tunable=True)
    frozen_trunk: int = option(0, "freeze the stem and first N blocks of a network that is a chain of blocks (dlib's, "
                               "torchvision's ResNets, ConvNeXts, EfficientNets, ...); with flip-only augmentation "
                               "their outputs are computed once and cached, and training runs the rest", low=0,
                               shown_default="0, or the model card's with its pretrained weights")
    pseudo_labels: list[str] | None = option(None, "first-round runs (MODEL/NAME or paths, same folds) whose fold-k "
                                             "test predictions label the test images fold k also learns from",
                                             cli="names", shown_default="none")
    pseudo_weight: float = option(1.0, "weight of a pseudo-labelled image against a labelled one", low=0,
                                  low_open=True, tunable=True)
    pretrained: bool | None = option(None, "start from pretrained weights", shown_default=(
        "on real data where the model has them; always where a package installs them"))
    weights: str | None = option(None, "local state dict (.pth) to start the model from")
    precision: str = option("auto", "autocast precision (auto: bf16 where the CPU or GPU has it natively)",
                            choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = option(True, "NHWC memory format")
    device: str = option("auto", "where to train: auto, cpu, cuda or cuda:N", result=False)
    devices: list[str] | None = option(None, "train folds in parallel, one worker process per device, e.g. "
                                       "cuda:0,cuda:1 or cpu,cpu (CPU workers share the cores)", result=False,
                                       member=False, cli="devices",
                                       shown_default="a worker per GPU, one process on a CPU")
    compile: bool = option(False, "torch.compile the model", result=False)
    num_threads: int | None = option(None, "CPU threads for torch", low=1, result=False, shown_default="all cores")
    drop_bad_rows: bool = option(False, "drop train rows whose image is missing or unreadable instead of stopping",
                                 member=False, cli="flag")
    time_limit: float | None = option(None, "wall-time budget for the run, e.g. 45m", low=0, low_open=True,
                                      result=False, member=False, cli="duration", shown_default="none")
    overwrite: bool = option(False, "replace a run directory made with another configuration or other data",
                             result=False, member=False, cli="flag")

    def resolved(self, *, sample: bool) -> TrainConfig:
        """Fill the None defaults that depend on the data and the starting weights."""
        cfg = dataclasses.replace(self)
        card = cards.card(cfg.model)
        if cfg.epochs is None:   # past its epoch cap a model overfits: it is the default where it is lower
            cfg.epochs = SAMPLE_EPOCHS if sample else min(EPOCHS, card.epoch_cap or EPOCHS)
        if cfg.pretrained is None:   # downloadable weights: not for the sample's two-minute demo
            cfg.pretrained = card.weights is not None and (card.weights.installed or not sample)
        if cfg.starts_pretrained():
            weights = card.weights
            cfg.lr_head = weights.lr_head if cfg.lr_head is None else cfg.lr_head
            cfg.lr_backbone = weights.lr_backbone if cfg.lr_backbone is None else cfg.lr_backbone
            if cfg.unfreeze_epoch is None:
                cfg.unfreeze_epoch = min(weights.unfreeze_epoch, cfg.epochs // 2)
        else:
            # From random init there is nothing worth freezing; heads and body learn together.
            cfg.lr_backbone = FROM_SCRATCH_LR if cfg.lr_backbone is None else cfg.lr_backbone
            cfg.lr_head = cfg.lr_backbone if cfg.lr_head is None else cfg.lr_head
            cfg.unfreeze_epoch = 0 if cfg.unfreeze_epoch is None else cfg.unfreeze_epoch
        return cfg

    def starts_pretrained(self) -> bool:
        """Whether training starts from pretrained weights (a package's, ImageNet's or a --weights file)."""
        return cards.card(self.model).weights is not None and bool(self.pretrained or self.weights is not None)

    def result_fields(self) -> dict:
        """The fields that decide what a run computes (compared before resuming a run directory)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k in RESULT_FIELDS}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "TrainConfig") -> TrainConfig:
        """A config from `values`, each checked against its field's type; `source` names where they came from."""
        check_types(values, source=source)
        return cls(**values)


# ----------------------------------------------------------------------------- what the metadata derives

FIELDS = {f.name: f for f in fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)
RESULT_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["result"])
TUNABLE_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["tunable"])
MEMBER_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["member"])
CHOICES = {name: f.metadata["choices"] for name, f in FIELDS.items() if f.metadata["choices"]}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_type(name: str) -> type:
    """The field's type without None: int, float, str, bool or list."""
    hint = HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    return typing.get_origin(args[0]) or args[0]


def optional(name: str) -> bool:
    hint = HINTS[name]
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def type_problem(name: str, value) -> str | None:
    """Why `value` cannot be field `name`'s value (its type only), or None."""
    if value is None:
        return None if optional(name) else "may not be null"
    kind = value_type(name)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is list:
        item = typing.get_args([a for a in typing.get_args(HINTS[name]) if a is not type(None)][0])[0]
        ok = isinstance(value, list) and value != [] and all(
            isinstance(v, item) and not isinstance(v, bool) for v in value)
        return None if ok else f"must be a non-empty list of {'integers' if item is int else 'strings'}"
    else:
        ok = isinstance(value, kind)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return None if ok else f"must be {names[kind]}, not {type(value).__name__} {value!r}"


def check_types(values: dict, *, source: str) -> None:
    """Refuse unknown fields and values of the wrong type, naming `source` (a file, an option)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; known: {sorted(FIELDS)}")
    problems = [f"{name}: {why}" for name, value in values.items() if (why := type_problem(name, value))]
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def range_problem(name: str, value) -> str | None:
    """Why `value` (of the right type) is outside field `name`'s choices or range, or None."""
    meta = FIELDS[name].metadata
    if value is None:
        return None
    if meta["choices"] and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low, high = meta["low"], meta["high"]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (low is not None or high is not None):
        below = low is not None and (value <= low if meta["low_open"] else value < low)
        above = high is not None and (value >= high if meta["high_open"] else value > high)
        if below or above:
            left = "(" if meta["low_open"] else "["
            right = ")" if meta["high_open"] else "]"
            if high is None:
                return f"must be {'>' if meta['low_open'] else '>='} {low:g}"
            return f"must be in {left}{low if low is not None else '-inf'}, {high}{right}"
    return None


def check_config(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the option and the bad value, before any work starts. What a model allows
    (its name, its input sizes, the blocks it can freeze, its stem) is the models' to check, a layer up:
    kit.models.check_model_config runs this, then those."""
    def bad(name, why):
        raise ConfigError(f"{flag(name)} {getattr(cfg, name)!r}: {why}")

    for name in FIELDS:
        value = getattr(cfg, name)
        why = type_problem(name, value) or range_problem(name, value)
        if why:
            bad(name, why)
    if cfg.name is not None and not NAME_PATTERN.fullmatch(cfg.name):
        bad("name", "a run name is one folder name: letters, digits, '.', '_' and '-', not starting with '.'")
    for device in [cfg.device, *(cfg.devices or [])]:
        if not DEVICE_PATTERN.fullmatch(device):
            bad("devices" if device != cfg.device else "device", f"{device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.devices is not None and "auto" in cfg.devices:
        bad("devices", "name each device: cpu, cuda or cuda:N")
    if cfg.frozen_trunk and cfg.pretrained is False and cfg.weights is None:
        bad("frozen_trunk", "a frozen trunk of random weights learns nothing; it needs pretrained weights")
    epochs = cfg.epochs if cfg.epochs is not None else EPOCHS
    if cfg.unfreeze_epoch is not None and cfg.unfreeze_epoch > epochs:
        bad("unfreeze_epoch", f"must be between 0 and --epochs ({epochs})")
    if cfg.only_folds is not None:
        outside = [k for k in cfg.only_folds if not 0 <= k < cfg.folds]
        if outside:
            bad("only_folds", f"fold(s) {outside} do not exist with --folds {cfg.folds}")
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        bad("weights", "no such file")
