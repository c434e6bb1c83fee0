"""The image cache: every image decoded once into a uint8 array (N x size x size x 3), memory-mapped.

The array is saved as .npy under .cache/images/; its name carries a hash of the file list (paths,
sizes, mtimes) and the size, so a changed dataset gets a new cache instead of silently reusing a
stale one. Decoding runs in worker processes, each writing its slice of the memory-mapped file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from kit.files import write_json
from kit.log import log

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


def cached_images(root: Path, paths: list[str], size: int, cache_root: Path, label: str,
                  workers: int | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Return (memory-mapped uint8 array, [(row, problem)]) and build the cache if needed."""
    key = cache_key(root, paths, size)
    npy = cache_root / f"{label}-{size}px-{key}.npy"
    meta_path = npy.with_suffix(".json")
    if npy.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return np.load(npy, mmap_mode="r"), [tuple(x) for x in meta["bad"]]

    cache_root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{npy.name}.", suffix=".npy", dir=cache_root)
    os.close(fd)
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)).flush()
        workers = workers or os.cpu_count() or 1
        chunk = max(1, -(-len(paths) // (workers * 8)))
        jobs = [(tmp, str(root), paths[s:s + chunk], s, size) for s in range(0, len(paths), chunk)]
        log(f"decoding {len(paths)} {label} images at {size}px into {npy} (once)")
        failures: list[tuple[int, str]] = []
        if workers > 1 and len(paths) > 256:
            with ProcessPoolExecutor(workers) as pool:
                for result in pool.map(_decode_chunk, jobs):
                    failures += result
        else:
            for job in jobs:
                failures += _decode_chunk(job)
        os.replace(tmp, npy)
        write_json(meta_path, {"root": str(root), "size": size, "count": len(paths), "bad": failures})
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return np.load(npy, mmap_mode="r"), failures
