"""The image cache: every image decoded once into a uint8 array (N x size x size x 3), memory-mapped.

The array is saved as .npy under .cache/images/; its name carries a hash of the file list (paths,
sizes, mtimes) and the size, so a changed dataset gets a new cache instead of silently reusing a
stale one. Decoding runs in worker processes, each writing its slice of the memory-mapped file.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kit.files import (
    FILE_MODE,
    check_free_space,
    disk_full,
    exclusive_lock,
    is_disk_full,
    remove_stale_temporaries,
    write_json,
)
from kit.log import log
from kit.processes import die_with_parent, sigterm_raises_terminated

CACHE_VERSION = 1


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode, centre-crop to a square and resize to size x size RGB uint8."""
    with Image.open(path) as image:
        # JPEG can decode straight at 1/2, 1/4 or 1/8 scale: far less work for small training sizes.
        image.draft("RGB", (size, size))
        image = image.convert("RGB")
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _decode_chunk(args):
    """Worker: decode a slice of images into the shared .npy file; return the failures."""
    npy_path, root, paths, start, size = args
    array = np.load(npy_path, mmap_mode="r+")
    failures = []
    for offset, rel in enumerate(paths):
        i = start + offset
        try:
            array[i] = decode_image(Path(root) / rel, size)
        except FileNotFoundError:
            failures.append((i, f"image {rel} is missing"))
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError for broken files
            failures.append((i, f"image {rel} is unreadable ({type(err).__name__}: {err})"))
    array.flush()
    return failures


def cache_key(root: Path, paths: list[str], size: int) -> str:
    digest = hashlib.sha1(f"v{CACHE_VERSION}:{size}".encode())
    for rel in paths:
        try:
            st = (root / rel).stat()
            digest.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{rel}:missing\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class CachedImages:
    images: np.ndarray                 # read-only memory-mapped uint8 (N, size, size, 3)
    bad: list[tuple[int, str]]         # (row, problem) for images that could not be decoded
    key: str                           # from the file list, sizes and mtimes: a changed file gets a new cache
    fingerprint: str                   # sha256 of the decoded pixels: what a run was trained on


def cached_images(root: Path, paths: list[str], size: int, cache_root: Path, label: str,
                  workers: int | None = None) -> CachedImages:
    """The decoded images of `paths` (relative to `root`) at `size`, from the cache or decoded into it.

    One process decodes a given cache at a time (the others wait for it and then read it); the array is
    written into a temporary file whose space is reserved first, so a full disk fails at once with a
    DiskFullError instead of killing the decoding workers later, and no partial file is left."""
    key = cache_key(root, paths, size)
    npy = cache_root / f"{label}-{size}px-{key}.npy"
    cached = read_cache(npy)
    if cached is not None:
        return cached
    cache_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_root)
    with exclusive_lock(cache_root / f".{npy.stem}.lock"):
        cached = read_cache(npy)       # another process may have built it while this one waited
        if cached is not None:
            return cached
        shape = (len(paths), size, size, 3)
        check_free_space(cache_root, int(np.prod(shape)), f"the image cache of {len(paths)} images ({label})")
        fd, tmp = tempfile.mkstemp(prefix=f".{npy.name}.{os.getpid()}.", suffix=".tmp", dir=cache_root)
        os.close(fd)
        try:
            reserve(tmp, shape)
            log(f"decoding {len(paths)} {label} images at {size}px into {npy} (once)")
            failures = decode_into(tmp, root, paths, size, workers or os.cpu_count() or 1)
            fingerprint = pixels_fingerprint(np.load(tmp, mmap_mode="r"))
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, npy)
            write_json(npy.with_suffix(".json"), {"root": str(root), "size": size, "count": len(paths), "bad": failures,
                                                  "fingerprint": fingerprint})
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(cache_root, f"the image cache {npy.name}") from None
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return CachedImages(np.load(npy, mmap_mode="r"), failures, key, fingerprint)


def read_cache(npy: Path) -> CachedImages | None:
    """A finished cache (the .npy and its .json), or None where there is none (or a damaged one, rebuilt)."""
    meta_path = npy.with_suffix(".json")
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(npy, mmap_mode="r")
        fingerprint = meta["fingerprint"]
    except (ValueError, OSError, KeyError):
        return None
    return CachedImages(images, [tuple(x) for x in meta["bad"]], npy.stem.rsplit("-", 1)[-1], fingerprint)


def reserve(tmp: str, shape: tuple[int, ...]) -> None:
    """Write the .npy header and reserve every byte of the array on disk (not a sparse file)."""
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
    with open(tmp, "rb+") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


def decode_into(tmp: str, root: Path, paths: list[str], size: int, workers: int) -> list[tuple[int, str]]:
    chunk = max(1, -(-len(paths) // (workers * 8)))
    jobs = [(tmp, str(root), paths[s:s + chunk], s, size) for s in range(0, len(paths), chunk)]
    if workers > 1 and len(paths) > 256:
        return decode_in_pool(jobs, workers)
    failures: list[tuple[int, str]] = []
    for job in jobs:
        failures += _decode_chunk(job)
    return failures


def decode_in_pool(jobs: list[tuple], workers: int) -> list[tuple[int, str]]:
    """Decode the chunks in a process pool whose processes die with this one (kill -9 included) and are
    killed, not waited for, when decoding is interrupted (Ctrl-C, SIGTERM): a pool process left behind
    holds hundreds of MB and blocks forever on its queue."""
    failures: list[tuple[int, str]] = []
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        with sigterm_raises_terminated():
            for result in pool.map(_decode_chunk, jobs):
                failures += result
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in set(multiprocessing.active_children()) - before:   # the pool's: their chunks are void
            process.kill()
        raise
    pool.shutdown()
    return failures


def pixels_fingerprint(images: np.ndarray) -> str:
    digest = hashlib.sha256(f"{images.shape}".encode())
    for start in range(0, len(images), 1024):
        digest.update(np.ascontiguousarray(images[start:start + 1024]).data)
    return digest.hexdigest()[:16]
