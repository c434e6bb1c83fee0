"""Image batches: uint8 cache rows -> normalised float tensors on the device, and batched augmentation.

No per-image Python: a batch is gathered from the memory-mapped cache with one fancy index, moved to
the device as uint8 (4x fewer bytes than float), and flipped, rotated, shifted and colour-jittered
there as one tensor. Random draws come from a CPU generator so that CPU and GPU runs see the same
augmentations for the same seed; a batch's draws go to the GPU as one pinned copy that does not wait for
it (a pageable copy waits for every kernel queued before it: one stall per draw, several a step).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# strength -> (max rotation in degrees, max shift as a fraction, max scale change, colour jitter)
AUGMENT_STRENGTHS = {
    "none": None,
    "flip": (0.0, 0.0, 0.0, 0.0),      # mirror images only: free, and what test-time flips average over
    "light": (10.0, 0.0, 0.0, 0.2),    # the original report: flips, small rotations (+ colour)
    "strong": (15.0, 0.08, 0.10, 0.3),
}


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, queued behind the GPU's work instead of waiting for it (pinned memory)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_device(batch_uint8: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) uint8 on the device.

    Permuting an NHWC array gives an NCHW tensor that already has channels_last strides; only
    when contiguous NCHW is wanted is a copy made.
    """
    x = host_to_device(torch.from_numpy(np.ascontiguousarray(batch_uint8)), device).permute(0, 3, 1, 2)
    return x if channels_last else x.contiguous()


def augment(x: torch.Tensor, strength: str, generator: torch.Generator) -> torch.Tensor:
    """Random flip, rotation/shift/scale and brightness/contrast for a float batch in [0, 1]."""
    params = AUGMENT_STRENGTHS[strength]
    if params is None:
        return x
    max_degrees, max_shift, max_scale, jitter = params
    b = x.shape[0]
    # The draws in their order (flip; angle, scale, shifts, brightness, contrast), made at once and moved as one.
    draws = host_to_device(torch.stack([torch.rand(b, generator=generator) for _ in range(7 if any(params) else 1)]),
                           x.device)
    drawn = iter(draws[1:])

    def uniform(low, high):
        return next(drawn) * (high - low) + low

    x = torch.where((draws[0] < 0.5).view(b, 1, 1, 1), x.flip(3), x)
    if not any(params):
        return x

    angle = uniform(-max_degrees, max_degrees) * (math.pi / 180)
    scale = 1 + uniform(-max_scale, max_scale)
    shift_x, shift_y = uniform(-max_shift, max_shift) * 2, uniform(-max_shift, max_shift) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    brightness = uniform(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
    contrast = uniform(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * brightness).clamp_(0, 1)


_NORMALISATION: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std on `device`, made once (not copied from the host for every batch)."""
    if device not in _NORMALISATION:
        _NORMALISATION[device] = (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                                  torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))
    return _NORMALISATION[device]


def prepare(x_uint8: torch.Tensor, *, strength: str = "none", generator: torch.Generator | None = None,
            channels_last: bool = True) -> torch.Tensor:
    """uint8 batch -> (augmented) float batch normalised with ImageNet statistics."""
    x = x_uint8.float().div_(255)
    if strength != "none":
        x = augment(x, strength, generator)
    mean, std = normalisation(x.device)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
