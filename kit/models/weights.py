"""Reading weights: kit checkpoints, torchvision state dicts, and ImageNet's through torchvision's cache."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

from kit.errors import WeightsError


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


def load_backbone_state(backbone: nn.Module, state: dict, *, model: str, source, skip: tuple[str, ...] = ()) -> None:
    """Load a torchvision state dict into `backbone`; its ImageNet classifier is dropped (the heads replace
    it), and so are the layers named in `skip` (replaced layers that keep their random init)."""
    skip = ("fc.", "classifier.", *skip)
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise WeightsError(f"{source} does not fit {model}: {err}") from None
    missing = [k for k in missing if not k.startswith(skip)]
    if missing or unexpected:
        raise WeightsError(f"{source} does not fit {model}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_weights(model: nn.Module, path) -> None:
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
