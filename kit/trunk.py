"""A frozen trunk, computed once: `--frozen-trunk N` with flip-only (or no) augmentation.

The stem and first N residual blocks of a dlib network hold most of its multiply-adds (at 112 px, the
stem and dlib_face's first 7 blocks are 72% of them) but few of its weights, and what they compute
transfers from the faces they were trained on. Frozen, their output for an image never changes: it is
computed once for every train and test image, as it is and mirrored (the two views flip augmentation and
test-time flips use), and training runs only the rest of the network on it. The features live in memory
for the process (folds, and members with the same trunk, share them).

    features = trunk_features(model, cfg, train_images, test_images, device=device, amp_dtype=None)
    x = features.batch(rows, flipped)              # rows past the train images are test images
    logits, age = model.from_trunk(x, cfg.frozen_trunk)
"""
from __future__ import annotations

import numpy as np
import torch

from kit.augment import prepare
from kit.config import TrainConfig
from kit.device import autocast
from kit.log import log
from kit.predict import ImageSource, inference_batch_size, predict_views

CACHEABLE_AUGMENT = ("none", "flip")    # what a cached trunk can give: the image or its mirror, nothing else
_MEMO: dict[tuple, TrunkFeatures] = {}


def cacheable(cfg: TrainConfig) -> bool:
    return cfg.frozen_trunk > 0 and cfg.augment in CACHEABLE_AUGMENT


class TrunkFeatures:
    """The trunk's output for every train and test image, in both views: [as is, mirrored]."""

    def __init__(self, train: list[torch.Tensor], test: list[torch.Tensor], device: torch.device):
        self.train, self.test, self.device = train, test, device
        self.n_train = len(train[0])

    def rows(self, split: str, rows: np.ndarray, flipped: bool) -> torch.Tensor:
        return (self.train if split == "train" else self.test)[int(flipped)][torch.tensor(rows)].to(self.device)

    def batch(self, rows: np.ndarray, flipped: torch.Tensor | None) -> torch.Tensor:
        """Training rows (those from n_train on are test images: pseudo-labels), each mirrored where `flipped`."""
        rows = torch.tensor(rows)
        flipped = torch.zeros(len(rows), dtype=torch.bool) if flipped is None else flipped.cpu()
        out = torch.empty((len(rows), *self.train[0].shape[1:]), dtype=self.train[0].dtype)
        in_train = rows < self.n_train
        for views, mask, offset in ((self.train, in_train, 0), (self.test, ~in_train, self.n_train)):
            for view in (0, 1):
                chosen = mask & (flipped == bool(view))
                if chosen.any():
                    out[chosen] = views[view][rows[chosen] - offset]
        return out.to(self.device)


def memo_key(cfg: TrainConfig, train_images, test_images) -> tuple:
    def identity(images):
        return getattr(images, "filename", None) or id(images)

    return (cfg.model, bool(cfg.pretrained), cfg.weights, cfg.size, cfg.frozen_trunk, cfg.precision,
            cfg.channels_last, identity(train_images), identity(test_images))


@torch.inference_mode()
def compute(model, images: np.ndarray, blocks: int, *, device: torch.device, amp_dtype, channels_last: bool,
            batch_size: int) -> list[torch.Tensor]:
    """The trunk's output for `images`, as they are and mirrored. Written batch by batch into two tensors made
    once: gathering batches and concatenating them copied every feature twice and doubled the peak memory
    (dlib_age's 2.2 GB took 1.6x the time its first batches promised)."""
    source = ImageSource(images, device, channels_last)
    views: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = prepare(source.batch(np.arange(start, min(start + batch_size, len(images)))),
                    channels_last=channels_last)
        for view, batch in enumerate((x, x.flip(3))):
            with autocast(device, amp_dtype):
                out = model.trunk(batch, blocks)
            if len(views) <= view:   # in the layout the trunk gives (channels-last or not), as before
                layout = torch.channels_last if channels_last and out.dim() == 4 else torch.contiguous_format
                views.append(torch.empty((len(images), *out.shape[1:]), dtype=torch.float32, memory_format=layout))
            views[view][start:start + len(out)] = out
    return views


def trunk_features(model, cfg: TrainConfig, train_images: np.ndarray, test_images: np.ndarray, *,
                   device: torch.device, amp_dtype) -> TrunkFeatures:
    """The trunk's features of every image, from this process's memo or computed now (with `model`'s
    trunk, which must be the frozen, pretrained one)."""
    key = memo_key(cfg, train_images, test_images)
    if key not in _MEMO:
        model.eval()
        options = dict(device=device, amp_dtype=amp_dtype, channels_last=cfg.channels_last,
                       batch_size=inference_batch_size(cfg.batch_size))
        train = compute(model, train_images, cfg.frozen_trunk, **options)
        test = compute(model, test_images, cfg.frozen_trunk, **options)
        _MEMO.clear()          # one trunk at a time: they take a GB or so each
        _MEMO[key] = TrunkFeatures(train, test, device)
        size = sum(t.numel() * t.element_size() for t in train + test)
        log(f"frozen trunk: the stem and {cfg.frozen_trunk} block(s) of {cfg.model} computed once for "
            f"{len(train_images)} + {len(test_images)} images, both views ({size / 2**20:.0f} MiB)")
    return _MEMO[key]


@torch.inference_mode()
def predict_from_trunk(model, features: TrunkFeatures, split: str, rows: np.ndarray, *, blocks: int, tta: bool,
                       amp_dtype, age_target, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """kit.predict.predict for a cached trunk: (probability of male, age) of `split`'s rows, the mirrored
    view averaged in where `tta`."""
    model.eval()
    gender_prob, age = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        views = [features.rows(split, chunk, flipped) for flipped in ((False, True) if tta else (False,))]
        batch_prob, batch_age = predict_views(lambda x: model.from_trunk(x, blocks), views, amp_dtype=amp_dtype,
                                              age_target=age_target)
        gender_prob.append(batch_prob)
        age.append(batch_age)
    return np.concatenate(gender_prob), np.concatenate(age)
