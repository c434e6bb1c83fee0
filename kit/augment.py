"""Image batches: uint8 cache rows -> normalised float tensors on the device, and batched augmentation.

No per-image Python: a batch is gathered from the memory-mapped cache with one fancy index, moved to
the device as uint8 (4x fewer bytes than float), and flipped, rotated, shifted and colour-jittered
there as one tensor. Random draws come from a CPU generator so that CPU and GPU runs see the same
augmentations for the same seed.
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


def to_device(batch_uint8: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) uint8 on the device.

    Permuting an NHWC array gives an NCHW tensor that already has channels_last strides; only
    when contiguous NCHW is wanted is a copy made.
    """
    x = torch.from_numpy(np.ascontiguousarray(batch_uint8))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2)
    return x if channels_last else x.contiguous()


def augment(x: torch.Tensor, strength: str, generator: torch.Generator) -> torch.Tensor:
    """Random flip, rotation/shift/scale and brightness/contrast for a float batch in [0, 1]."""
    params = AUGMENT_STRENGTHS[strength]
    if params is None:
        return x
    max_degrees, max_shift, max_scale, jitter = params
    b = x.shape[0]

    def uniform(low, high):
        return (torch.rand(b, generator=generator) * (high - low) + low).to(x.device)

    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
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


def prepare(x_uint8: torch.Tensor, *, strength: str = "none", generator: torch.Generator | None = None,
            channels_last: bool = True) -> torch.Tensor:
    """uint8 batch -> (augmented) float batch normalised with ImageNet statistics."""
    x = x_uint8.float().div_(255)
    if strength != "none":
        x = augment(x, strength, generator)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
