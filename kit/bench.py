"""Throughput benchmark: is the data path invisible?

    python -m kit.bench --model resnet18 --size 64 --batch-size 64 --data ../shared/data/utkface-age-gender.zip

measures, in one process, training and inference images/s of
  (a) kit:       the kit's own data path + model step, exactly as `cv` uses them (memory-mapped uint8
                 cache -> device -> batched augmentation -> forward/backward);
  (b) ceiling:   the model step alone on a batch already on the device, same precision and memory
                 format: the compute ceiling;
  (c) reference: a loader like the original notebook's: a Dataset that opens each JPEG with PIL,
                 resizes, augments and converts per image, in a DataLoader with workers.
It prints a table, then one JSON line with the figures, the ratios kit/ceiling and kit/reference,
the peak memory, and the cached dataset's resident memory relative to its uint8 array.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kit.age import AgeTarget
from kit.augment import IMAGENET_MEAN, IMAGENET_STD, prepare
from kit.config import TrainConfig, UserError, add_train_arguments, config_from_args
from kit.cv import project_root
from kit.data import load_competition, locate
from kit.models import create_model
from kit.train import ImageSource, autocast, flush_denormals_to_zero, moving_average, pick_amp_dtype, pick_device


def mapped_rss(path) -> int:
    """Resident bytes of the memory mappings of `path` (from /proc/self/smaps)."""
    if not path:
        return 0
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line[:1].isupper():          # a mapping header: "start-end perms offset dev inode path"
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Timer:
    """Images per second over `steps` calls after `warmup` calls, synchronising the device."""

    def __init__(self, device, warmup, steps):
        self.device, self.warmup, self.steps = device, warmup, steps

    def __call__(self, step, batch_size) -> float:
        for _ in range(self.warmup):
            step()
        self.sync()
        started = time.perf_counter()
        for _ in range(self.steps):
            step()
        self.sync()
        return self.steps * batch_size / (time.perf_counter() - started)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def reference_loader(root: Path, paths: list[str], size: int, batch_size: int, workers: int, train: bool):
    """The original notebook's way: PIL decode + torchvision transforms per image, every epoch."""
    from PIL import Image
    from torchvision import transforms

    steps = [transforms.Resize((size, size))]
    if train:
        steps += [transforms.RandomHorizontalFlip(), transforms.RandomRotation(10)]
    transform = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    class Faces(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(root / paths[i]) as image:
                return transform(image.convert("RGB"))

    return torch.utils.data.DataLoader(Faces(), batch_size=batch_size, shuffle=train, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


def forever(loader):
    while True:  # a small dataset runs out before the timed steps do: start another epoch
        yield from loader


class ModelSteps:
    """One training and one inference step of a model as `cv` runs it (precision, memory format, stem,
    age target, AdamW, the moving average of the weights)."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.device = device
        self.amp_dtype = pick_amp_dtype(cfg.precision, device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.age_target = AgeTarget(cfg.age_target, cfg.age_loss, mean=33.0, std=19.5)
        # The weights training starts from: pretrained ones can run slower than random ones (denormals).
        flush_denormals_to_zero(device)
        self.model = create_model(cfg.model, pretrained=bool(cfg.pretrained), weights=cfg.weights,
                                  age_outputs=self.age_target.outputs,
                                  stem=cfg.stem).to(device, memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.average = moving_average(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.gender = torch.randint(0, 2, (cfg.batch_size,), device=device)
        self.age = torch.randint(1, 90, (cfg.batch_size,), device=device).float()

    def train(self, x):
        with autocast(self.device, self.amp_dtype):
            logits, age_output = self.forward(x)
        loss = F.cross_entropy(logits.float(), self.gender) + self.age_target.loss(age_output, self.age)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update_parameters(self.model)

    @torch.inference_mode()
    def infer(self, x):
        with autocast(self.device, self.amp_dtype):
            self.forward(x)


def kit_throughput(cfg: TrainConfig, images: np.ndarray, rows: np.ndarray, *, infer_batch: int,
                   steps: int = 20, warmup: int = 3, model_steps: ModelSteps | None = None,
                   source: ImageSource | None = None) -> dict:
    """Training and inference images/s through the kit's own data path (cache -> device -> augment -> step).

    Pass `source` to reuse one: on a GPU with room an ImageSource holds the whole cache in device memory."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = pick_device(cfg.device)
    model_steps = model_steps or ModelSteps(cfg, device)
    source = source or ImageSource(images, device, cfg.channels_last)
    rng, generator, b = np.random.default_rng(0), torch.Generator().manual_seed(0), cfg.batch_size
    timer = Timer(device, warmup, steps)

    def kit_train():
        picked = rows[rng.integers(0, len(rows), b)]
        model_steps.train(prepare(source.batch(picked), strength=cfg.augment, generator=generator,
                                  channels_last=cfg.channels_last))

    def kit_infer():
        start = int(rng.integers(0, max(1, len(rows) - infer_batch)))
        model_steps.infer(prepare(source.batch(rows[start:start + infer_batch]), channels_last=cfg.channels_last))

    return {"train": timer(kit_train, b), "infer": timer(kit_infer, infer_batch)}


def benchmark(cfg: TrainConfig, *, steps: int = 20, warmup: int = 3, rounds: int = 3,
              reference_workers: int | None = None, root: Path | None = None) -> dict:
    root = Path(root or project_root())
    _, _, is_sample = locate(cfg.data, project_root=root)
    cfg = cfg.resolved(sample=is_sample)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    comp, train_images, _ = load_competition(cfg.data, project_root=root, size=cfg.size)
    device = pick_device(cfg.device)
    model_steps = ModelSteps(cfg, device)
    amp_dtype, memory_format = model_steps.amp_dtype, model_steps.memory_format
    train_step, infer_step = model_steps.train, model_steps.infer
    b = cfg.batch_size
    rows = comp.train["cache_index"].to_numpy()
    timer = Timer(device, warmup, steps)
    source = ImageSource(train_images, device, cfg.channels_last)
    infer_batch = 2 * b

    fixed = prepare(source.batch(rows[:b]), channels_last=cfg.channels_last)
    fixed_infer = prepare(source.batch(rows[:infer_batch]), channels_last=cfg.channels_last)
    # kit and ceiling alternate for `rounds` rounds and each keeps its best round: on a small CPU a single
    # measurement swings by 20-40% (allocator warm-up, other load), and whichever ran first would lose.
    results = {"kit": {"train": 0.0, "infer": 0.0}, "ceiling": {"train": 0.0, "infer": 0.0}}
    for _ in range(rounds):
        kit = kit_throughput(cfg, train_images, rows, infer_batch=infer_batch, steps=steps, warmup=warmup,
                             model_steps=model_steps, source=source)
        ceiling = {"train": timer(lambda: train_step(fixed), b), "infer": timer(lambda: infer_step(fixed_infer), infer_batch)}
        for path, figures in (("kit", kit), ("ceiling", ceiling)):
            results[path] = {m: max(results[path][m], figures[m]) for m in figures}
    # Read the whole cache once, as an epoch does, then see what it costs in memory: the file's
    # resident pages, plus whatever the process grew by (a hidden copy would show there).
    rss_before_pass = rss_bytes()
    for start in range(0, len(rows), b):
        source.batch(rows[start:start + b])
    mapped = mapped_rss(getattr(train_images, "filename", None))
    unexplained_growth = max(0, rss_bytes() - rss_before_pass - mapped)
    cache_ratio = (mapped + unexplained_growth) / train_images.nbytes

    workers = reference_workers if reference_workers is not None else (os.cpu_count() or 1)
    paths = comp.train["full_path"].tolist()
    for mode, batch in (("train", b), ("infer", infer_batch)):
        loader = forever(reference_loader(comp.root, paths, cfg.size, batch, workers, train=mode == "train"))

        def reference_step():
            x = next(loader).to(device, non_blocking=True).contiguous(memory_format=memory_format)
            (train_step if mode == "train" else infer_step)(x)

        results.setdefault("reference", {})[mode] = timer(reference_step, batch)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = {
        "model": cfg.model, "size": cfg.size, "batch_size": b, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "channels_last": cfg.channels_last, "threads": torch.get_num_threads(), "reference_workers": workers,
        "rounds": rounds, "steps_per_round": steps,
        "images_per_s": {k: {m: round(v, 1) for m, v in d.items()} for k, d in results.items()},
        "kit_over_ceiling": {m: round(results["kit"][m] / results["ceiling"][m], 3) for m in ("train", "infer")},
        "kit_over_reference": {m: round(results["kit"][m] / results["reference"][m], 3) for m in ("train", "infer")},
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        "cache_mib": round(train_images.nbytes / 2**20, 1),
        "cache_resident_over_array": round(cache_ratio, 3),
    }
    return summary


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def print_table(summary: dict) -> None:
    print(f"\n{summary['model']} at {summary['size']}px, batch {summary['batch_size']}, {summary['device_name']}, "
          f"{summary['precision']}, {summary['threads']} threads")
    print(f"{'path':<12}{'train img/s':>14}{'infer img/s':>14}")
    for path, figures in summary["images_per_s"].items():
        print(f"{path:<12}{figures['train']:>14.1f}{figures['infer']:>14.1f}")
    for key in ("kit_over_ceiling", "kit_over_reference"):
        print(f"{key:<20} train {summary[key]['train']:.2f}  infer {summary[key]['infer']:.2f}")
    print(f"peak RSS {summary['peak_rss_mib']} MiB; cache {summary['cache_mib']} MiB, resident after a full "
          f"pass {summary['cache_resident_over_array']:.2f} x its size")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating kit/ceiling rounds; each keeps its best")
    parser.add_argument("--reference-workers", type=int, help="DataLoader workers of the reference loader (default: all cores)")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        for option in ("steps", "rounds"):
            if getattr(args, option) < 1:
                raise UserError(f"--{option} {getattr(args, option)}: must be at least 1")
        cfg = config_from_args(args)
        summary = benchmark(cfg, steps=args.steps, warmup=args.warmup, rounds=args.rounds, reference_workers=args.reference_workers)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table(summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
