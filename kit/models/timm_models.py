"""timm's models as `timm.NAME` (NAME as timm names it, with or without its weights' tag: convnext_tiny,
convnext_tiny.fb_in22k_ft_in1k), where timm is installed: `pip install "facekit[timm]"`.

timm builds the network with no classifier (num_classes=0: its forward gives the pooled features) and loads
its pretrained weights itself, from its and Hugging Face's caches or a download; `--weights FILE` is a file in
timm's own format (or a kit checkpoint). The card comes from the weights' pretrained_cfg (input size, whether
it is fixed, mean and std, licence); the multiply-accumulates are counted on a network built with empty weights.
Where the weights expect another normalisation than ImageNet's (what the kit feeds), an InputAdapter maps it.
timm's networks train whole here (no --frozen-trunk): their blocks are not split.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

from torch import nn

import kit.models.weights as weights_io
from kit.augment import IMAGENET_MEAN, IMAGENET_STD
from kit.errors import ConfigError, WeightsError
from kit.models.card import InputAdapter, ModelCard, Weights, count_gmac, empty_weights
from kit.models.registry import FaceModel, Family, register_family
from kit.models.torchvision_models import IMAGENET_RATES, INPUT_SIZE, RECIPE

SMALLEST = 32   # where timm's config states no smallest input: the usual 32x downsampling


def missing() -> str | None:
    if importlib.util.find_spec("timm") is None:
        return 'timm is not installed: pip install "facekit[timm]" (or pip install timm)'
    return None


def names() -> list[str]:
    if missing():
        return []
    import timm

    return sorted(timm.list_models(pretrained=True))


def pretrained_cfg(name: str):
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigError(f"unknown model 'timm.{name}': timm has no pretrained weights of that name "
                          "(timm.list_models(pretrained=True) lists them)")
    return cfg


@functools.cache
def card(name: str) -> ModelCard:
    import timm

    cfg = pretrained_cfg(name)
    native = cfg.input_size[-1]
    smallest = max(16, cfg.min_input_size[-1] if cfg.min_input_size else SMALLEST)
    size = native if cfg.fixed_input_size else max(INPUT_SIZE, smallest)
    try:   # counted, not stated: timm's configs give no cost
        with empty_weights():
            network = timm.create_model(name, pretrained=False, num_classes=0)
        gmac = count_gmac(network, size)
    except (RuntimeError, NotImplementedError):   # an operation the meta device cannot run
        gmac = math.nan
    source = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or "timm")
    return ModelCard(
        f"timm.{name}", network=f"timm's {name}", licence=cfg.license or "see its model card",
        input_size=size, gmac=gmac, min_size=smallest if not cfg.fixed_input_size else native,
        fixed_size=bool(cfg.fixed_input_size), mean=tuple(cfg.mean), std=tuple(cfg.std),
        weights=Weights("timm's and Hugging Face's caches", source, f"timm's {cfg.tag or 'default'} weights",
                        **IMAGENET_RATES),
        recipe=RECIPE)


def create(name: str, *, pretrained: bool, weights: str | None, age_outputs: int) -> FaceModel:
    import timm

    model_card = card(name)
    state = weights_io.read_state_dict(weights) if weights else None
    whole_model = state is not None and weights_io.is_kit_checkpoint(state)
    options = dict(num_classes=0)
    if weights and not whole_model:   # timm's own format: timm loads it as its pretrained weights
        options.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    else:
        options.update(pretrained=pretrained and not weights)
    try:
        network = timm.create_model(name, **options)
    except Exception as err:   # offline (Hugging Face's client), or a file that does not fit
        hub = os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
        raise WeightsError(
            f"weights for timm.{name} cannot be had ({type(err).__name__}: {str(err).splitlines()[0]}).\n"
            f"  - they come from {model_card.weights.file}, kept in Hugging Face's cache ({hub}; HF_HOME moves it)\n"
            f"  - or pass --weights PATH to load a local file in timm's format\n"
            f"  - or pass --no-pretrained to start from random initialisation") from None
    backbone = network
    if (model_card.mean, model_card.std) != (IMAGENET_MEAN, IMAGENET_STD):
        backbone = nn.Sequential(InputAdapter(model_card.mean, model_card.std), network)
    model = FaceModel(backbone, network.num_features, age_outputs=age_outputs)
    if whole_model:
        weights_io.load_weights(model, weights)
    return model


register_family(Family(
    "timm", about='timm\'s models, with timm installed (pip install "facekit[timm]")',
    cells=("`timm.NAME`", "any of timm's models with pretrained weights, where timm is installed "
           '(`pip install "facekit[timm]"`)', "what timm's weights of that name learnt",
           "timm's and Hugging Face's caches (the weights' own licence)",
           "224, or the network's own where larger or fixed", "counted at the size"),
    names=names, card=card, create=create, missing=missing))
