"""Predicting with a model: batches from the image cache, and (probability of male, age) per row.

    source = ImageSource(images, device, channels_last=True)
    gender_prob, age = predict(model, source, rows, tta=True, amp_dtype=None, age_target=target,
                               channels_last=True, batch_size=inference_batch_size(64))
"""
from __future__ import annotations

import numpy as np
import torch

from kit.age import AgeTarget
from kit.augment import host_to_device, prepare, to_device
from kit.device import autocast

MIN_INFERENCE_BATCH = 256  # inference keeps no activations: large batches amortise per-call overhead
# On a GPU the whole uint8 image cache moves to device memory if it takes at most this share of what is
# free: the rest is left for the model, its activations at training batch size and the allocator's slack.
GPU_CACHE_SHARE = 0.3


def inference_batch_size(train_batch_size: int) -> int:
    """The batch that predictions use, and that `best` and `bench` time them with."""
    return max(MIN_INFERENCE_BATCH, 4 * train_batch_size)


class ImageSource:
    """Hands out uint8 batches on the device; on a GPU with room, the whole cache lives there."""

    def __init__(self, images: np.ndarray, device: torch.device, channels_last: bool):
        self.images, self.device, self.channels_last = images, device, channels_last
        self.on_device = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.nbytes < GPU_CACHE_SHARE * free:
                self.on_device = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        if self.on_device is not None:
            x = self.on_device[host_to_device(torch.as_tensor(rows), self.device)]
            return x if self.channels_last else x.contiguous()
        return to_device(self.images[rows], self.device, self.channels_last)


class MixedSource:
    """Rows 0..len(first)-1 from `first`, the rows after them from `second`: the training rows and the
    pseudo-labelled test images of a fold, as one index space."""

    def __init__(self, first: ImageSource, second: ImageSource):
        self.first, self.second, self.boundary = first, second, len(first.images)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        in_first = rows < self.boundary
        if in_first.all():
            return self.first.batch(rows)
        parts = {True: self.first.batch(rows[in_first]), False: self.second.batch(rows[~in_first] - self.boundary)}
        sample = parts[False]
        out = torch.empty((len(rows), *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
        mask = torch.as_tensor(in_first, device=sample.device)
        out[mask], out[~mask] = parts[True], parts[False]
        return out


@torch.inference_mode()
def predict_views(forward, views: list[torch.Tensor], *, amp_dtype,
                  age_target: AgeTarget) -> tuple[np.ndarray, np.ndarray]:
    """(probability of male, age in years) of one batch, averaged over its `views` (the image and its
    mirror for TTA); `forward` maps a view to (gender logits, age output): the model, or the rest of it
    after a cached trunk (kit/trunk.py)."""
    probs, ages = 0, 0
    for view in views:
        with autocast(view.device, amp_dtype):
            logits, age_output = forward(view)
        probs = probs + logits.float().softmax(1)[:, 1]
        ages = ages + age_target.years(age_output)
    return (probs / len(views)).cpu().numpy(), (ages / len(views)).cpu().numpy()


def predict_batch(model, x: torch.Tensor, *, tta: bool, amp_dtype,
                  age_target: AgeTarget) -> tuple[np.ndarray, np.ndarray]:
    """(probability of male, age in years) for a prepared batch `x`, averaged over the flip if `tta`."""
    return predict_views(model, [x, x.flip(3)] if tta else [x], amp_dtype=amp_dtype, age_target=age_target)


@torch.inference_mode()
def predict(model, source: ImageSource, rows: np.ndarray, *, tta: bool, amp_dtype, age_target: AgeTarget,
            channels_last: bool, batch_size: int = MIN_INFERENCE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(probability of male, age in years) for the cache rows `rows`."""
    model.eval()
    gender_prob, age = [], []
    for start in range(0, len(rows), batch_size):
        x = prepare(source.batch(rows[start:start + batch_size]), channels_last=channels_last)
        batch_prob, batch_age = predict_batch(model, x, tta=tta, amp_dtype=amp_dtype, age_target=age_target)
        gender_prob.append(batch_prob)
        age.append(batch_age)
    return np.concatenate(gender_prob), np.concatenate(age)
