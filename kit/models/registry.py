"""The model registry and the two-headed model every entry builds.

Every model maps an image batch to (gender logits [B, 2], age output [B] or [B, bins]; kit/age.py says
what the age output means). A model is a small function registered by name (as in timm), taking
keyword arguments pretrained, weights, age_outputs and stem; `create_model(name, ...)` is the one way
to build one.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kit.config import check_config, flag
from kit.errors import ConfigError

MODELS: dict[str, Callable[..., FaceModel]] = {}
MIN_SIZE: dict[str, int] = {}     # the smallest input a model's downsampling leaves a feature map for
TRUNK_BLOCKS: dict[str, int] = {}  # blocks a model's trunk can be frozen up to (--frozen-trunk); 0: none


def register_model(fn=None, *, min_size: int = 16, trunk_blocks: int = 0):
    """`@register_model`, or `@register_model(min_size=104, trunk_blocks=14)` for a network that needs larger
    inputs, or whose backbone can be split after its first blocks (FaceModel.trunk / from_trunk)."""
    def register(fn):
        MODELS[fn.__name__] = fn
        MIN_SIZE[fn.__name__] = min_size
        TRUNK_BLOCKS[fn.__name__] = trunk_blocks
        return fn

    return register(fn) if fn is not None else register


class FaceModel(nn.Module):
    """A feature extractor (`backbone`) and two linear heads on its features."""

    def __init__(self, backbone: nn.Module, num_features: int, age_outputs: int = 1):
        super().__init__()
        self.backbone = backbone
        self.gender_head = nn.Linear(num_features, 2)
        self.age_head = nn.Linear(num_features, age_outputs)

    def forward(self, x):
        features = self.backbone(x)
        age = self.age_head(features)
        return self.gender_head(features), age.squeeze(1) if age.shape[1] == 1 else age

    def head_parameters(self):
        return [*self.gender_head.parameters(), *self.age_head.parameters()]

    # A frozen trunk (--frozen-trunk N): the stem and first N blocks of a backbone that can be split there
    # (the dlib networks: trunk(x, N), rest(features, N), trunk_modules(N)). Its output can be computed once
    # per image and cached, and training runs the rest of the network only.
    def trunk(self, x, blocks: int):
        return self.backbone.trunk(x, blocks)

    def from_trunk(self, features, blocks: int):
        """The heads' outputs from the trunk's output: forward(x) == from_trunk(trunk(x, n), n)."""
        features = self.backbone.rest(features, blocks)
        age = self.age_head(features)
        return self.gender_head(features), age.squeeze(1) if age.shape[1] == 1 else age

    def trunk_parameters(self, blocks: int):
        return [p for module in self.backbone.trunk_modules(blocks) for p in module.parameters()]


def check_model_config(cfg) -> None:
    """A TrainConfig's whole check: kit.config.check_config's (every field; it knows no model), then what the
    chosen model allows: its name, its smallest input, the blocks its trunk can freeze."""
    check_config(cfg)
    if cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; registered models: {', '.join(sorted(MODELS))}")
    if cfg.frozen_trunk > TRUNK_BLOCKS[cfg.model]:
        raise ConfigError(f"{flag('frozen_trunk')} {cfg.frozen_trunk}: {cfg.model} has {TRUNK_BLOCKS[cfg.model]} "
                          "blocks to freeze" + ("" if TRUNK_BLOCKS[cfg.model] else
                                                " (only the dlib networks can be split)"))
    if cfg.size < MIN_SIZE[cfg.model]:
        raise ConfigError(f"{flag('size')} {cfg.size}: {cfg.model} needs inputs of at least {MIN_SIZE[cfg.model]} px")


def create_model(name: str, *, pretrained: bool = False, weights: str | None = None, age_outputs: int = 1,
                 stem: str = "standard") -> FaceModel:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name](pretrained=pretrained, weights=weights, age_outputs=age_outputs, stem=stem)
