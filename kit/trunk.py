"""A frozen trunk, computed once: `--frozen-trunk N` with flip-only (or no) augmentation.

The stem and first N residual blocks of a dlib network hold most of its multiply-adds (at 112 px, the
stem and dlib_face's first 7 blocks are 72% of them) but few of its weights, and what they compute
transfers from the faces they were trained on. Frozen, their output for an image never changes: it is
computed once for every train and test image, as it is and mirrored (the two views flip augmentation and
test-time flips use; one view when neither is used), and training runs only the rest of the network on
it. The features live for the process (folds, and members with the same trunk, share them).

Their size is known before they are computed: one small batch gives the trunk's output shape, and
images x views x channels x height x width x bytes is checked against free memory and disk first
(`place`, a pure function of those figures). On a GPU they are kept in fp16 (half the bytes), on the GPU
where they fit, else in host memory; on a CPU in fp32 in host memory, as before. Where host memory
cannot hold them either, they go to memory-mapped files in the project's .cache/trunk/ (the same dtype:
the same results, read from disk as the page cache can hold them), where its disk has room: each file is
made with a unique temporary name, reserved whole (a full disk fails before computing, never as a SIGBUS
mid-training), mapped and unlinked at once, so its blocks are freed when the features are (the next
trunk, or the process's end, Ctrl-C and kill -9 included) and no file is ever left behind. A cache that
fits nowhere is refused with its size, the free memory and disk, and the options that shrink it, never
computed into an out-of-memory kill (dlib_age at 224 px, both views of the full data: about 37 GB).

    features = trunk_features(model, cfg, train_images, test_images, device=device, amp_dtype=None)
    x = features.batch(rows, flipped)              # rows past the train images are test images
    logits, age = model.from_trunk(x, cfg.frozen_trunk)
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kit.augment import host_to_device, prepare, to_device
from kit.config import TrainConfig
from kit.device import autocast
from kit.errors import ConfigError
from kit.files import disk_full, is_disk_full, remove_stale_temporaries
from kit.log import log
from kit.paths import Project
from kit.predict import ImageSource, inference_batch_size, predict_views

CACHEABLE_AUGMENT = ("none", "flip")    # what a cached trunk can give: the image or its mirror, nothing else
GPU_SHARE = 0.5    # of a GPU's free memory the features may take: the rest for the model, its batches, the allocator
HOST_SHARE = 0.7   # of the host's available memory: the rest for the process, the image cache's pages, the others
DISK_SHARE = 0.8   # of the free disk under the cache folder: the rest for checkpoints, predictions, the image cache
TRUNK_DIR = "trunk"   # under the project's .cache/: the memory-mapped features, while a process uses them
PROBE_IMAGES = 2   # the batch that gives the trunk's output shape before the rest is computed
_MEMO: dict[tuple, TrunkFeatures] = {}


def cacheable(cfg: TrainConfig) -> bool:
    return cfg.frozen_trunk > 0 and cfg.augment in CACHEABLE_AUGMENT


def views_of(cfg: TrainConfig) -> int:
    """The views a run reads: the mirror too for flip augmentation or test-time flips."""
    return 2 if cfg.augment == "flip" or cfg.tta else 1


@dataclass(frozen=True)
class Storage:
    """Where the features are kept and in what dtype: `device`'s memory, or with a `folder`, memory-mapped
    files there (host memory's pages, backed by the disk)."""
    device: torch.device
    dtype: torch.dtype
    folder: Path | None = None

    @property
    def where(self) -> str:
        if self.folder is not None:
            return f"memory-mapped files in {self.folder}"
        return "GPU memory" if self.device.type == "cuda" else "host memory"


@dataclass(frozen=True)
class Room:
    """Free bytes where the features could go; None where it is not known (no GPU, no MemAvailable, no disk)."""
    gpu: int | None
    host: int | None
    disk: int | None


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


def disk_free(folder: Path) -> int | None:
    """Free bytes on the disk that holds `folder` (or would: its nearest existing parent)."""
    folder = Path(folder).absolute()
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


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


def place(nbytes_fp32: int, *, device: torch.device, room: Room, folder: Path, cfg: TrainConfig,
          n_images: int) -> Storage:
    """Where features of `nbytes_fp32` (in fp32) go, given the `room` there is: fp16 on the GPU where they fit
    in its free memory, else fp16 in host memory, else fp16 in memory-mapped files in `folder`; on a CPU the
    same in fp32, without the GPU. Host memory where the kernel does not say what is available (as before).
    Refused, naming the size, the room and what shrinks them, where they fit nowhere. Pure: no measuring."""
    half = device.type == "cuda"
    size = nbytes_fp32 // 2 if half else nbytes_fp32
    dtype = torch.float16 if half else torch.float32
    if half and room.gpu is not None and size <= GPU_SHARE * room.gpu:
        return Storage(device, dtype)
    if room.host is None or size <= HOST_SHARE * room.host:
        return Storage(torch.device("cpu"), dtype)
    if room.disk is not None and size <= DISK_SHARE * room.disk:
        return Storage(torch.device("cpu"), dtype, folder)
    gpu = (f"{shown(room.gpu or 0)} free on {device} (they may take {GPU_SHARE:.0%}), " if half else "")
    disk = "an unknown amount" if room.disk is None else shown(room.disk)
    views = views_of(cfg)
    raise ConfigError(
        f"--frozen-trunk {cfg.frozen_trunk}: {cfg.model}'s cached trunk features of {n_images} images x {views} "
        f"view(s) at {cfg.size} px take {shown(size)} ({'fp16' if half else 'fp32'}), and there are "
        f"{gpu}{shown(room.host)} available in host memory (they may take {HOST_SHARE:.0%}) and {disk} free on "
        f"the disk holding {folder} (they may take {DISK_SHARE:.0%}); refused before computing them. Smaller: "
        "a lower --size (the features shrink with its square), a larger --frozen-trunk (each downsampling block "
        "halves them), "
        + ("--augment none without --tta (one view, half the size), " if views == 2 else "")
        + "or --frozen-trunk 0 (no cache: the trunk runs on every batch); or free some disk there "
        "(or point FACEKIT_ROOT at a larger one)")


def choose_storage(nbytes_fp32: int, device: torch.device, cfg: TrainConfig, n_images: int,
                   folder: Path) -> Storage:
    """`place` with the room measured now: the GPU's free memory, the host's available memory, the free disk
    under `folder`; a log line says where and why when the features go to disk."""
    gpu_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    room = Room(gpu=gpu_free, host=host_available(), disk=disk_free(folder))
    storage = place(nbytes_fp32, device=device, room=room, folder=folder, cfg=cfg, n_images=n_images)
    if storage.folder is not None:
        size = nbytes_fp32 // 2 if device.type == "cuda" else nbytes_fp32
        gpu = f"{GPU_SHARE:.0%} of the {shown(room.gpu)} free on {device} nor in " if room.gpu is not None else ""
        log(f"frozen trunk: its features ({shown(size)}, {str(storage.dtype).removeprefix('torch.')}) do not "
            f"fit in {gpu}{HOST_SHARE:.0%} of the {shown(room.host)} of host memory available: they go to "
            f"memory-mapped files in {folder} ({shown(room.disk)} free on its disk), read back from it where "
            "the page cache cannot hold them (slower epochs); unlinked at once, their space is freed with them "
            "(at the next trunk or the process's end)")
    return storage


def file_backed(shape: tuple[int, ...], dtype: torch.dtype, layout: torch.memory_format,
                folder: Path) -> torch.Tensor:
    """An uninitialised CPU tensor of `shape` whose memory is a file in `folder` (MAP_SHARED, so the kernel
    writes its pages back to the disk instead of holding them in memory). The file is made under a unique
    temporary name (one a later process removes should this one be killed in the instant before the
    unlink), every byte reserved (a full disk fails here, not as a SIGBUS while training), mapped, and
    unlinked at once: the mapping keeps its blocks until the tensor is freed, and nothing is left behind."""
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype, memory_format=layout)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    numel = math.prod(shape)
    fd, path = tempfile.mkstemp(prefix=f".features.{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, numel * dtype.itemsize)
            else:   # macOS: a sparse file, its blocks taken as it is written
                os.ftruncate(fd, numel * dtype.itemsize)
        finally:
            os.close(fd)
        flat = torch.from_file(path, shared=True, size=numel, dtype=dtype)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full(folder, "a frozen trunk's features") from None
        raise
    finally:
        os.unlink(path)
    if layout == torch.channels_last and len(shape) == 4:   # the strides torch.empty gives channels-last
        n, c, h, w = shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(shape)


def allocate(storage: Storage, shape: tuple[int, ...], layout: torch.memory_format) -> torch.Tensor:
    if storage.folder is not None:
        return file_backed(shape, storage.dtype, layout, storage.folder)
    return torch.empty(shape, dtype=storage.dtype, device=storage.device, memory_format=layout)


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
                out_views.append(allocate(storage, (len(images), *out.shape[1:]), layout))
            out_views[view][start:start + len(out)] = out
    return out_views


def trunk_features(model, cfg: TrainConfig, train_images: np.ndarray, test_images: np.ndarray, *,
                   device: torch.device, amp_dtype, cache_dir: Path | None = None) -> TrunkFeatures:
    """The trunk's features of every image, from this process's memo or computed now (with `model`'s
    trunk, which must be the frozen, pretrained one), once their size is known to fit. `cache_dir`: the
    project's .cache/ (default: the current project's), whose trunk/ takes features memory cannot hold."""
    key = memo_key(cfg, train_images, test_images)
    if key not in _MEMO:
        _MEMO.clear()          # one trunk at a time: they take a GB or so each (freed before the next is sized)
        if device.type == "cuda":
            torch.cuda.empty_cache()   # what the allocator kept of them counts as used in mem_get_info
        model.eval()
        views, n_images = views_of(cfg), len(train_images) + len(test_images)
        shape = output_shape(model, train_images, cfg.frozen_trunk, device=device, amp_dtype=amp_dtype,
                             channels_last=cfg.channels_last)
        folder = (cache_dir if cache_dir is not None else Project.at().cache) / TRUNK_DIR
        storage = choose_storage(n_images * views * math.prod(shape) * 4, device, cfg, n_images, folder)
        options = dict(device=device, amp_dtype=amp_dtype, channels_last=cfg.channels_last,
                       batch_size=inference_batch_size(cfg.batch_size), views=views, storage=storage)
        train = compute(model, train_images, cfg.frozen_trunk, **options)
        test = compute(model, test_images, cfg.frozen_trunk, **options)
        _MEMO[key] = TrunkFeatures(train, test, device)
        size = sum(t.numel() * t.element_size() for t in train + test)
        log(f"frozen trunk: the stem and {cfg.frozen_trunk} block(s) of {cfg.model} computed once for "
            f"{len(train_images)} + {len(test_images)} images, {views} view(s) ({size / 2**20:.0f} MiB, "
            f"{str(storage.dtype).removeprefix('torch.')} in {storage.where})")
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
