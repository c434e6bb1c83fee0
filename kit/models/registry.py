"""The model registry: every model's card and builder, and the two-headed model every entry builds.

Every model maps an image batch to (gender logits [B, 2], age output [B] or [B, bins]; kit/age.py says
what the age output means). A model is a small function registered by name with its card (as in timm):
`@register_model(CARD)`. Families of models named PREFIX.NAME (torchvision's classification models, timm's)
register once, with the list of names their library has and a card for each (`register_family`).
`create_model(name, ...)` is the one way to build a model, `card(name)` the one way to read its card.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

import kit.cards
from kit.config import FIELDS, check_config, flag
from kit.errors import ConfigError, WeightsError
from kit.models.card import ModelCard

MODELS: dict[str, Callable[..., FaceModel]] = {}   # the kit's own models: name -> builder
CARDS: dict[str, ModelCard] = {}                    # and their cards


@dataclass(frozen=True)
class Family:
    """Models named PREFIX.NAME, one for each name another library lists (torchvision's, timm's)."""
    prefix: str
    about: str                             # what --help says of them
    cells: tuple[str, ...]                 # their row in the README's model table (tests/test_models.py)
    names: Callable[[], list[str]]         # every NAME (none where the library is missing)
    card: Callable[[str], ModelCard]       # NAME's card, or a ConfigError naming what is wrong
    create: Callable[..., FaceModel]       # create(NAME, pretrained=, weights=, age_outputs=)
    featured: tuple[str, ...] = ()         # the NAMEs whose cards rank among best's default members
    missing: Callable[[], str | None] = lambda: None   # why it cannot be used here (its library), or None


FAMILIES: dict[str, Family] = {}


def register_model(model_card: ModelCard):
    """`@register_model(CARD)` on a builder `fn(*, pretrained, weights, age_outputs)` (and `stem` where the card
    has a small stem)."""
    def register(fn):
        MODELS[model_card.name] = fn
        CARDS[model_card.name] = model_card
        if model_card.weights is not None and model_card.weights.installed:
            kit.cards.INSTALLED.add(model_card.name)
        return fn

    return register


def register_family(family: Family) -> None:
    FAMILIES[family.prefix] = family


def card(name: str) -> ModelCard:
    """The card of a registered model or of a family's member; a ConfigError naming what is wrong."""
    if name in CARDS:
        return CARDS[name]
    prefix, dot, member = name.partition(".")
    family = FAMILIES.get(prefix) if dot else None
    if family is None:
        families = "".join(f", {f.prefix}.NAME" for f in FAMILIES.values())
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(CARDS)}{families}")
    why = family.missing()
    if why:
        raise ConfigError(f"model {name!r}: {why}")
    return family.card(member)


def listing() -> str:
    """The registered models as --model's help says them."""
    own = [f"{c.name} ({c.input_size} px)" for c in CARDS.values()]
    text = f"registered model: {', '.join(own[:-1])} or {own[-1]}"
    text += "".join(f"; {f.prefix}.NAME: {f.about}" for f in FAMILIES.values())
    return f"{text} (docs/usage.md, \"Models\"; default: {FIELDS['model'].default})"


kit.cards.install(card, listing)


def default_members(device_type: str) -> list[str]:
    """The models best trains by default on a device of this type ("cpu", or "cuda" for any GPU): those whose
    cards give them a rank there, the first rank first."""
    cards = list(CARDS.values())
    for family in FAMILIES.values():
        if not family.missing():
            cards += [family.card(name) for name in family.featured]
    ranked = [(c.cpu_rank if device_type == "cpu" else c.gpu_rank, c.name) for c in cards]
    return [name for rank, name in sorted((r, n) for r, n in ranked if r is not None)]


class FaceModel(nn.Module):
    """A feature extractor (`backbone`) and two linear heads on its features."""

    def __init__(self, backbone: nn.Module, num_features: int, age_outputs: int = 1):
        super().__init__()
        self.backbone = backbone
        self.gender_head = nn.Linear(num_features, 2)
        self.age_head = nn.Linear(num_features, age_outputs)

    def forward(self, x):
        return self.heads(self.backbone(x))

    def heads(self, features):
        age = self.age_head(features)
        return self.gender_head(features), age.squeeze(1) if age.shape[1] == 1 else age

    def head_parameters(self):
        return [*self.gender_head.parameters(), *self.age_head.parameters()]

    # A frozen trunk (--frozen-trunk N): the stem and first N blocks of a backbone that can be split there
    # (trunk(x, N), rest(features, N), trunk_modules(N): the dlib networks, and torchvision's that are a chain of
    # blocks). Its output can be computed once per image and cached, and training runs the rest only.
    def trunk(self, x, blocks: int):
        return self.backbone.trunk(x, blocks)

    def from_trunk(self, features, blocks: int):
        """The heads' outputs from the trunk's output: forward(x) == from_trunk(trunk(x, n), n)."""
        return self.heads(self.backbone.rest(features, blocks))

    def trunk_parameters(self, blocks: int):
        return [p for module in self.backbone.trunk_modules(blocks) for p in module.parameters()]


def check_model_config(cfg) -> None:
    """A TrainConfig's whole check: kit.config.check_config's (every field; it knows no model), then what the
    chosen model's card allows: its name, its input sizes, the blocks its trunk can freeze, its stem."""
    check_config(cfg)
    model = card(cfg.model)
    if cfg.frozen_trunk > model.trunk_blocks:
        raise ConfigError(f"{flag('frozen_trunk')} {cfg.frozen_trunk}: {cfg.model} has {model.trunk_blocks} "
                          "blocks to freeze" + ("" if model.trunk_blocks else " (its network is not a chain of "
                                                                              "blocks the kit can split)"))
    if model.fixed_size and cfg.size != model.input_size:
        raise ConfigError(f"{flag('size')} {cfg.size}: {cfg.model} takes {model.input_size} px inputs only "
                          "(its position embeddings are made for that size)")
    if cfg.size < model.min_size:
        raise ConfigError(f"{flag('size')} {cfg.size}: {cfg.model} needs inputs of at least {model.min_size} px")
    if cfg.stem != "standard" and not model.small_stem:
        raise ConfigError(f"{flag('stem')} {cfg.stem}: only resnet18 has a stem to change; {cfg.model} keeps "
                          "its own")


# Learning rates in a card's recipe are for random init; from pretrained weights the weights' own apply.
LEARNING_RATE_FIELDS = ("lr_head", "lr_backbone", "unfreeze_epoch")


def recipe_config(cfg, model: str, given: set[str], *, sample: bool = False, on_gpu: bool = False):
    """`cfg` for `model` with its card filled in where the user gave nothing (`given`: the fields they chose):
    its input size and recipe, and when it starts from pretrained weights their frozen trunk; `on_gpu`: the
    GPUs' batch and rates too (`gpu_recipe`). What best's members train, and what `cv MODEL` trains as typed."""
    model_card = card(model)
    recipe = {"size": model_card.input_size, **model_card.recipe}
    if dataclasses.replace(cfg, model=model).resolved(sample=sample).starts_pretrained():
        recipe = {k: v for k, v in recipe.items() if k not in LEARNING_RATE_FIELDS}
        if model_card.weights.frozen_trunk:
            recipe["frozen_trunk"] = model_card.weights.frozen_trunk
    cfg = dataclasses.replace(cfg, model=model, **{k: v for k, v in recipe.items() if k not in given})
    return gpu_recipe(cfg, given, sample=sample) if on_gpu else cfg


def gpu_recipe(cfg, given: set[str], *, sample: bool):
    """On GPUs, the card's `gpu_batch_size` where the user chose no batch, and then the learning rates they did not
    choose scaled by the square root of the batch's growth (Adam's rule: x2 for 64 -> 256). At 64 a GPU waits on
    kernel launches (dlib_face's trained blocks on cached features are a few million multiply-adds an image).
    Only cards whose score at that batch was measured against 64's (on the CPU: docs/experiments.md, "A GPU's
    batch") have one: a larger batch of a 224 px ImageNet network could also fill a T4's 16 GB."""
    batch_size = card(cfg.model).gpu_batch_size
    if "batch_size" in given or batch_size is None or cfg.batch_size >= batch_size:
        return cfg
    scale = math.sqrt(batch_size / cfg.batch_size)
    rates = cfg.resolved(sample=sample)
    return dataclasses.replace(cfg, batch_size=batch_size, **{
        field: getattr(rates, field) * scale for field in ("lr_head", "lr_backbone") if field not in given})


def create_model(name: str, *, pretrained: bool = False, weights: str | None = None, age_outputs: int = 1,
                 stem: str = "standard") -> FaceModel:
    model_card = card(name)
    if stem != "standard" and not model_card.small_stem:
        raise ConfigError(f"--stem {stem}: only resnet18 has a stem to change; {name} keeps its own")
    if pretrained and model_card.weights is None and not weights:
        raise WeightsError(f"{name} has no pretrained weights; drop --pretrained")
    options = dict(pretrained=pretrained, weights=weights, age_outputs=age_outputs)
    if model_card.small_stem:
        options["stem"] = stem
    if name in MODELS:
        return MODELS[name](**options)
    prefix, _, member = name.partition(".")
    return FAMILIES[prefix].create(member, **options)


def table_cells(model_card: ModelCard) -> list[str]:
    """A card's row in the README's model table (tests/test_models.py checks the table holds these)."""
    weights = model_card.weights
    size = f"{model_card.input_size}" + (" only" if model_card.fixed_size else "") + (
        f" (at least {model_card.min_size})" if model_card.min_size > 16 and not model_card.fixed_size else "")
    source = f"{weights.source} ({model_card.licence})" if weights else f"none; code {model_card.licence}"
    return [f"`{model_card.name}`", model_card.network, weights.trained_on if weights else "nothing (random init)",
            source, size, f"{model_card.gmac:.3f}"]


def table(cards: list[ModelCard], families: list[Family]) -> str:
    """The README's model table (without its last column, the measured fold-0 scores) for these cards and families."""
    header = ["model", "network", "pretrained on", "weights: where (licence)", "input px", "GMAC / image"]
    rows = [header, ["---"] * len(header), *(table_cells(c) for c in cards), *(list(f.cells) for f in families)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
