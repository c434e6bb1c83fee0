"""Reading weights: kit checkpoints, torchvision state dicts, and torchvision's ImageNet weights wherever a user
keeps them (torchvision's cache, a dataset or Kaggle Model attached under /kaggle/input, or a download)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from torch import nn

from kit.errors import WeightsError
from kit.paths import input_dir

# Where torchvision's ImageNet weights are looked for (imagenet_state_dict), as the cards say it.
TORCHVISION_SOURCE = "torchvision's cache, /kaggle/input"
# How deep under /kaggle/input a weights file is looked for: a dataset keeps it at <dataset>/FILE, a Kaggle
# Model at <model>/<framework>/<variation>/<version>/FILE.
KAGGLE_INPUT_DEPTH = 4


def read_state_dict(path: str | os.PathLike, *, source: str | None = None) -> dict:
    """A state dict from a .pth: torchvision's own, or one of the kit's checkpoints. `source` names the file in
    an error (default: --weights PATH)."""
    source = source or f"--weights {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{source}: cannot be read as a PyTorch state dict ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: not a state dict of tensors")
    return state


def is_kit_checkpoint(state: dict) -> bool:
    """A whole FaceModel's weights (a fold's best.pt), not a backbone's."""
    return any(k.startswith("backbone.") for k in state)


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


def hub_file(url: str) -> Path:
    """Where torchvision's weights API keeps the file of `url`: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def kaggle_input_file(name: str) -> Path | None:
    """The first file called `name` under /kaggle/input (an attached dataset or Kaggle Model), or None."""
    root = input_dir()
    if not root.is_dir():
        return None
    for folder, subfolders, files in os.walk(root):
        if name in files:
            return Path(folder) / name
        subfolders.sort()
        if len(Path(folder).relative_to(root).parts) >= KAGGLE_INPUT_DEPTH:
            subfolders.clear()
    return None


def imagenet_state_dict(weights, model: str, timeout: float = 20.0) -> dict:
    """torchvision's pretrained `weights` (a member of a model's weights enum, e.g. ResNet18_Weights.IMAGENET1K_V1)
    as its state dict: from torchvision's cache, else from a file of the same name under /kaggle/input, else
    downloaded into the cache; offline without them, a WeightsError naming the file and the ways out."""
    cached = hub_file(weights.url)
    found = None if cached.is_file() else kaggle_input_file(cached.name)
    if found is not None:
        return read_state_dict(found, source=str(found))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # an unreachable host must not hang the run
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:
        raise WeightsError(
            f"ImageNet weights for {model} are not in the torchvision cache and cannot be downloaded "
            f"({type(err).__name__}: {err}).\n"
            f"  - expected file: {cached}\n"
            f"    (copy {cached.name} there; the folder follows TORCH_HOME, now "
            f"{os.environ.get('TORCH_HOME', '~/.cache/torch')})\n"
            f"  - or, in a Kaggle notebook, attach a dataset holding {cached.name} (found anywhere under "
            f"{input_dir()})\n"
            f"  - or pass --weights PATH to load a local state dict\n"
            f"  - or pass --no-pretrained to start from random initialisation") from None
    finally:
        socket.setdefaulttimeout(previous)
