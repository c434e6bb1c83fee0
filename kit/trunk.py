"""A frozen trunk, computed once: `--frozen-trunk N` with flip-only (or no) augmentation.

The stem and first N residual blocks of a dlib network hold most of its multiply-adds (at 112 px, the
stem and dlib_face's first 7 blocks are 72% of them) but few of its weights, and what they compute
transfers from the faces they were trained on. Frozen, their output for an image never changes: it is
computed once for every train and test image, as it is and mirrored (the two views flip augmentation and
test-time flips use; one view when neither is used), and training runs only the rest of the network on
it. The features live in memory for the process (folds, and members with the same trunk, share them).

Their size is known before they are computed: one small batch gives the trunk's output shape, and
images x views x channels x height x width x bytes is checked against free memory first. On a GPU they
are kept in fp16 (half the bytes), on the GPU where they fit, else in host memory; on a CPU in fp32 (host
memory), as before. A cache that fits nowhere is refused with its size and the options that shrink it,
never computed into an out-of-memory kill (dlib_age at 224 px, both views of the full data: about 37 GB).

    features = trunk_features(model, cfg, train_images, test_images, device=device, amp_dtype=None)
    x = features.batch(rows, flipped)              # rows past the train images are test images
    logits, age = model.from_trunk(x, cfg.frozen_trunk)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kit.augment import host_to_device, prepare, to_device
from kit.config import TrainConfig
from kit.device import autocast
from kit.errors import ConfigError
from kit.log import log
from kit.predict import ImageSource, inference_batch_size, predict_views

CACHEABLE_AUGMENT = ("none", "flip")    # what a cached trunk can give: the image or its mirror, nothing else
GPU_SHARE = 0.5    # of a GPU's free memory the features may take: the rest for the model, its batches, the allocator
HOST_SHARE = 0.7   # of the host's available memory: the rest for the process, the image cache's pages, the others
PROBE_IMAGES = 2   # the batch that gives the trunk's output shape before the rest is computed
_MEMO: dict[tuple, TrunkFeatures] = {}


def cacheable(cfg: TrainConfig) -> bool:
    return cfg.frozen_trunk > 0 and cfg.augment in CACHEABLE_AUGMENT


def views_of(cfg: TrainConfig) -> int:
    """The views a run reads: the mirror too for flip augmentation or test-time flips."""
    return 2 if cfg.augment == "flip" or cfg.tta else 1


@dataclass(frozen=True)
class Storage:
    """Where the features are kept and in what dtype."""
    device: torch.device
    dtype: torch.dtype


class TrunkFeatures:
    """The trunk's output for every train and test image, by view: [as is, mirrored] (or only as is)."""

    def __init__(self, train: list[torch.Tensor], test: list[torch.Tensor], device: torch.device):
        self.train, self.test, self.device = train, test, device
        self.n_train = len(train[0])
        self.storage = train[0].device

    def rows(self, split: str, rows: np.ndarray, flipped: bool) -> torch.Tensor:
        views = self.train if split == "train" else self.test
        return views[int(flipped)][host_to_device(torch.tensor(rows), self.storage)].to(self.device).float()

    def batch(self, rows: np.ndarray, flipped: torch.Tensor | None) -> torch.Tensor:
        """Training rows (those from n_train on are test images: pseudo-labels), each mirrored where `flipped`;
        in fp32 on the device whatever the storage (an fp32 model takes no fp16 input)."""
        rows = host_to_device(torch.tensor(rows), self.storage)
        flipped = (torch.zeros(len(rows), dtype=torch.bool, device=self.storage) if flipped is None
                   else host_to_device(flipped, self.storage))
        out = torch.empty((len(rows), *self.train[0].shape[1:]), dtype=self.train[0].dtype, device=self.storage)
        in_train = rows < self.n_train
        for views, mask, offset in ((self.train, in_train, 0), (self.test, ~in_train, self.n_train)):
            for view in range(len(views)):
                chosen = mask & (flipped == bool(view))
                if chosen.any():
                    out[chosen] = views[view][rows[chosen] - offset]
        return out.to(self.device).float()


def memo_key(cfg: TrainConfig, train_images, test_images) -> tuple:
    def identity(images):
        return getattr(images, "filename", None) or id(images)

    return (cfg.model, bool(cfg.pretrained), cfg.weights, cfg.size, cfg.frozen_trunk, cfg.precision,
            cfg.channels_last, views_of(cfg), identity(train_images), identity(test_images))


def shown(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def host_available() -> int | None:
    """Bytes the kernel says can be had without swapping (MemAvailable), or None where it does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@torch.inference_mode()
def output_shape(model, images: np.ndarray, blocks: int, *, device: torch.device, amp_dtype,
                 channels_last: bool) -> tuple[int, ...]:
    """The trunk's output shape for one image, from a batch of PROBE_IMAGES."""
    # A copy: the images may be a read-only memmap of the cache, which torch.from_numpy warns of.
    x = prepare(to_device(np.array(images[:PROBE_IMAGES]), device, channels_last), channels_last=channels_last)
    with autocast(device, amp_dtype):
        return tuple(model.trunk(x, blocks).shape[1:])


def choose_storage(nbytes_fp32: int, device: torch.device, cfg: TrainConfig, n_images: int) -> Storage:
    """fp16 on the GPU where the features fit in its free memory, else fp16 in host memory; fp32 in host
    memory on a CPU. Refused, naming the size and what shrinks it, where they fit nowhere."""
    half = device.type == "cuda"
    size = nbytes_fp32 // 2 if half else nbytes_fp32
    gpu_free = torch.cuda.mem_get_info(device)[0] if half else None
    if gpu_free is not None and size <= GPU_SHARE * gpu_free:
        return Storage(device, torch.float16)
    host = host_available()
    if host is None or size <= HOST_SHARE * host:
        return Storage(torch.device("cpu"), torch.float16 if half else torch.float32)
    where = (f"{shown(gpu_free)} free on {device} (they may take {GPU_SHARE:.0%}), " if half else "") + \
        f"{shown(host)} available in host memory (they may take {HOST_SHARE:.0%})"
    views = views_of(cfg)
    raise ConfigError(
        f"--frozen-trunk {cfg.frozen_trunk}: {cfg.model}'s cached trunk features of {n_images} images x {views} "
        f"view(s) at {cfg.size} px take {shown(size)} ({'fp16' if half else 'fp32'}), and there are "
        f"{where}; refused before computing them. Smaller: a lower --size (the features shrink with its square), "
        f"a larger --frozen-trunk (each downsampling block halves them), "
        + ("--augment none without --tta (one view, half the size), " if views == 2 else "")
        + "or --frozen-trunk 0 (no cache: the trunk runs on every batch)")


@torch.inference_mode()
def compute(model, images: np.ndarray, blocks: int, *, device: torch.device, amp_dtype, channels_last: bool,
            batch_size: int, views: int = 2, storage: Storage | None = None) -> list[torch.Tensor]:
    """The trunk's output for `images`, as they are (and mirrored, with 2 `views`), kept as `storage` says
    (default: on the device, fp16 on a GPU). Written batch by batch into tensors made once: gathering batches
    and concatenating them copied every feature twice and doubled the peak memory (dlib_age's 2.2 GB took 1.6x
    the time its first batches promised)."""
    storage = storage or Storage(device, torch.float16 if device.type == "cuda" else torch.float32)
    source = ImageSource(images, device, channels_last)
    out_views: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = prepare(source.batch(np.arange(start, min(start + batch_size, len(images)))),
                    channels_last=channels_last)
        for view, batch in enumerate((x, x.flip(3))[:views]):
            with autocast(device, amp_dtype):
                out = model.trunk(batch, blocks)
            if len(out_views) <= view:   # in the layout the trunk gives (channels-last or not), as before
                layout = torch.channels_last if channels_last and out.dim() == 4 else torch.contiguous_format
                out_views.append(torch.empty((len(images), *out.shape[1:]), dtype=storage.dtype,
                                             device=storage.device, memory_format=layout))
            out_views[view][start:start + len(out)] = out
    return out_views


def trunk_features(model, cfg: TrainConfig, train_images: np.ndarray, test_images: np.ndarray, *,
                   device: torch.device, amp_dtype) -> TrunkFeatures:
    """The trunk's features of every image, from this process's memo or computed now (with `model`'s
    trunk, which must be the frozen, pretrained one), once their size is known to fit."""
    key = memo_key(cfg, train_images, test_images)
    if key not in _MEMO:
        _MEMO.clear()          # one trunk at a time: they take a GB or so each (freed before the next is sized)
        if device.type == "cuda":
            torch.cuda.empty_cache()   # what the allocator kept of them counts as used in mem_get_info
        model.eval()
        views, n_images = views_of(cfg), len(train_images) + len(test_images)
        shape = output_shape(model, train_images, cfg.frozen_trunk, device=device, amp_dtype=amp_dtype,
                             channels_last=cfg.channels_last)
        storage = choose_storage(n_images * views * math.prod(shape) * 4, device, cfg, n_images)
        options = dict(device=device, amp_dtype=amp_dtype, channels_last=cfg.channels_last,
                       batch_size=inference_batch_size(cfg.batch_size), views=views, storage=storage)
        train = compute(model, train_images, cfg.frozen_trunk, **options)
        test = compute(model, test_images, cfg.frozen_trunk, **options)
        _MEMO[key] = TrunkFeatures(train, test, device)
        size = sum(t.numel() * t.element_size() for t in train + test)
        log(f"frozen trunk: the stem and {cfg.frozen_trunk} block(s) of {cfg.model} computed once for "
            f"{len(train_images)} + {len(test_images)} images, {views} view(s) ({size / 2**20:.0f} MiB, "
            f"{str(storage.dtype).removeprefix('torch.')} in {'GPU' if storage.device.type == 'cuda' else 'host'} "
            "memory)")
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
