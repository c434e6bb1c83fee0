"""Throughput benchmark: is the data path invisible?

    facekit bench --model resnet18 --size 64 --batch-size 64 --data ../shared/data/utkface-age-gender.zip

measures, in one process, training and inference images/s of
  (a) kit:       the very steps `cv` runs (kit/throughput.py): memory-mapped uint8 cache -> device ->
                 batched augmentation -> Trainer.step, and predict on inference_batch_size() rows;
  (b) ceiling:   the same Trainer.step and prediction on a batch already prepared on the device: the
                 compute alone, same model, optimizer, precision, threads and denormal mode;
  (c) reference: a loader like the original notebook's: a Dataset that opens each JPEG with PIL,
                 resizes, augments and converts per image, in a DataLoader with workers.
Kit and ceiling steps alternate one by one (which goes first alternates too), each timed on its own, so
drift, warm-up and order effects fall on both alike. The kit path contains the ceiling's compute, so it
cannot be faster: a kit/ceiling ratio above 1.05 is reported as a measurement fault, not as a result.
It prints a table, then one JSON line with the figures, the ratios, the peak memory, and the cached
dataset's resident memory relative to its uint8 array.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from kit.augment import IMAGENET_MEAN, IMAGENET_STD, prepare
from kit.config import TrainConfig
from kit.cv import config_from_command
from kit.data import load_competition, locate
from kit.device import announce_device, check_device, describe_device, dtype_name, set_threads
from kit.errors import ConfigError
from kit.log import log
from kit.models import check_model_config
from kit.options import add_config_arguments, add_model_argument
from kit.paths import Project
from kit.predict import predict_batch, predict_views
from kit.throughput import KitSteps

SOUND_RATIO = 1.05   # kit/ceiling above this: the measurement, not the kit, is at fault


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


def interleaved(kit_step, ceiling_step, sync, *, steps: int, warmup: int) -> tuple[float, float]:
    """(kit seconds, ceiling seconds) summed over `steps` pairs of calls, alternating which runs first."""
    for _ in range(warmup):
        kit_step()
        ceiling_step()
    totals = [0.0, 0.0]
    for i in range(steps):
        order = ((0, kit_step), (1, ceiling_step)) if i % 2 == 0 else ((1, ceiling_step), (0, kit_step))
        for slot, step in order:
            sync()
            started = time.perf_counter()
            step()
            sync()
            totals[slot] += time.perf_counter() - started
    return totals[0], totals[1]


def soundness(ratios: dict[str, float]) -> list[str]:
    """Measurement faults: a kit path timed faster than the compute it contains."""
    return [f"{mode}: the kit path measured {ratio:.2f}x the ceiling, above {SOUND_RATIO}; the kit's step contains "
            "the ceiling's, so the timing is at fault (other load, too few --steps): rerun on an idle machine"
            for mode, ratio in ratios.items() if ratio > SOUND_RATIO]


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
                                       drop_last=True, persistent_workers=workers > 0,
                                       pin_memory=torch.cuda.is_available())


def forever(loader):
    while True:  # a small dataset runs out before the timed steps do: start another epoch
        yield from loader


def reference_step(kit: KitSteps, loader, *, train: bool, batch: int):
    """One step of the ceiling's compute on a batch from the notebook's loader."""
    trainer = kit.trainer
    gender, ages = kit.gender[:batch].to(kit.device), kit.ages[:batch].to(kit.device)
    memory_format = torch.channels_last if kit.cfg.channels_last else torch.contiguous_format

    def step():
        x = next(loader).to(kit.device, non_blocking=True).contiguous(memory_format=memory_format)
        if train:
            trainer.step(x, gender[:len(x)], ages[:len(x)])
        else:
            predict_batch(trainer.model, x, tta=False, amp_dtype=trainer.amp_dtype, age_target=trainer.age_target)

    return step


def time_reference(kit: KitSteps, comp, *, workers: int, steps: int, warmup: int) -> dict:
    """The notebook's loader feeding the same steps as the ceiling."""
    figures = {}
    for mode, batch in (("train", kit.batch_size), ("infer", kit.infer_batch)):
        loader = forever(reference_loader(comp.root, comp.train["full_path"].tolist(), kit.cfg.size, batch, workers,
                                          train=mode == "train"))
        step = reference_step(kit, loader, train=mode == "train", batch=batch)
        figures[mode] = kit.timed(step, batch, steps=steps, warmup=warmup)
    return figures


def benchmark(cfg: TrainConfig, *, steps: int = 30, warmup: int = 3, reference_workers: int | None = None,
              root: Path | None = None) -> dict:
    project = Project.at(root)
    check_model_config(cfg)
    _, _, is_sample = locate(cfg.data, project_root=project.root)
    cfg = cfg.resolved(sample=is_sample)
    check_model_config(cfg)
    check_device(cfg.device, cfg.precision, compile=cfg.compile)
    set_threads(cfg.num_threads)
    comp, train_images, _ = load_competition(cfg.data, project_root=project.root, size=cfg.size)
    train = comp.train
    rows = train["cache_index"].to_numpy()
    kit = KitSteps(cfg, train_images, rows, train["age"].to_numpy(), train["gender"].to_numpy())
    trainer = kit.trainer

    fixed_gender, fixed_ages = kit.gender[:kit.batch_size].to(kit.device), kit.ages[:kit.batch_size].to(kit.device)
    if kit.features is not None:   # a cached frozen trunk: the steps start from its features
        fixed = kit.features.batch(np.arange(kit.batch_size), None)
        fixed_infer = kit.features.batch(np.arange(kit.infer_batch), None)
    else:
        fixed = prepare(kit.source.batch(rows[:kit.batch_size]), strength=cfg.augment, generator=kit.generator,
                        channels_last=cfg.channels_last)
        fixed_infer = prepare(kit.source.batch(rows[:kit.infer_batch]), channels_last=cfg.channels_last)

    def ceiling_train():
        trainer.step(fixed, fixed_gender, fixed_ages)

    forward_infer = ((lambda x: trainer.model.from_trunk(x, cfg.frozen_trunk)) if kit.features is not None
                     else trainer.model)

    @torch.inference_mode()
    def ceiling_infer():
        trainer.model.eval()
        predict_views(forward_infer, [fixed_infer], amp_dtype=trainer.amp_dtype, age_target=trainer.age_target)
        trainer.model.train()

    results = {"kit": {}, "ceiling": {}}
    for mode, kit_step, ceiling_step, batch in (("train", kit.train_step, ceiling_train, kit.batch_size),
                                                ("infer", kit.infer_step, ceiling_infer, kit.infer_batch)):
        kit_s, ceiling_s = interleaved(kit_step, ceiling_step, kit.sync, steps=steps, warmup=warmup)
        results["kit"][mode], results["ceiling"][mode] = steps * batch / kit_s, steps * batch / ceiling_s
    ratios = {m: results["kit"][m] / results["ceiling"][m] for m in ("train", "infer")}
    faults = soundness(ratios)

    # Read the whole cache once, as an epoch does, then see what it costs in memory: the file's
    # resident pages, plus whatever the process grew by (a hidden copy would show there).
    rss_before_pass = rss_bytes()
    for start in range(0, len(rows), kit.batch_size):
        kit.source.batch(rows[start:start + kit.batch_size])
    mapped = mapped_rss(getattr(train_images, "filename", None))
    unexplained_growth = max(0, rss_bytes() - rss_before_pass - mapped)
    cache_ratio = (mapped + unexplained_growth) / train_images.nbytes

    workers = reference_workers if reference_workers is not None else (os.cpu_count() or 1)
    trainer.from_trunk = 0   # the notebook's loader feeds images: the whole network runs on them
    results["reference"] = time_reference(kit, comp, workers=workers, steps=max(1, steps // 3), warmup=warmup)
    device = kit.device
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "model": cfg.model, "size": cfg.size, "batch_size": kit.batch_size, "infer_batch_size": kit.infer_batch,
        "device": str(device),
        "device_name": describe_device(device),
        "precision": dtype_name(trainer.amp_dtype),
        "channels_last": cfg.channels_last, "threads": torch.get_num_threads(), "reference_workers": workers,
        "steps": steps, "images_per_s": {k: {m: round(v, 1) for m, v in d.items()} for k, d in results.items()},
        "kit_over_ceiling": {m: None if faults and r > SOUND_RATIO else round(r, 3) for m, r in ratios.items()},
        "measurement_faults": faults,
        "kit_over_reference": {m: round(results["kit"][m] / results["reference"][m], 3) for m in ("train", "infer")},
        "peak_rss_mib": round(peak / 2**20, 1),
        # the device it ran on: with --device cuda:1, GPU 0's figure would be another process's (or nothing)
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "cache_mib": round(train_images.nbytes / 2**20, 1),
        "cache_resident_over_array": round(cache_ratio, 3),
    }


def print_table(summary: dict) -> None:
    log(f"\n{summary['model']} at {summary['size']}px, batch {summary['batch_size']} (inference "
        f"{summary['infer_batch_size']}), {summary['device_name']}, {summary['precision']}")
    log(f"{'path':<12}{'train img/s':>14}{'infer img/s':>14}")
    for path, figures in summary["images_per_s"].items():
        log(f"{path:<12}{figures['train']:>14.1f}{figures['infer']:>14.1f}")
    for key in ("kit_over_ceiling", "kit_over_reference"):
        shown = "  ".join(f"{m} {'FAULT' if v is None else f'{v:.2f}'}" for m, v in summary[key].items())
        log(f"{key:<20} {shown}")
    for fault in summary["measurement_faults"]:
        log(f"measurement fault: {fault}")
    if summary["peak_cuda_mib"] is not None:
        log(f"peak GPU memory on {summary['device']}: {summary['peak_cuda_mib']} MiB allocated")
    log(f"peak RSS {summary['peak_rss_mib']} MiB; cache {summary['cache_mib']} MiB, resident after a full "
        f"pass {summary['cache_resident_over_array']:.2f} x its size")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--steps", type=int, default=30, help="timed kit/ceiling pairs per mode (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs first (default: %(default)s)")
    parser.add_argument("--reference-workers", type=int,
                        help="DataLoader workers of the reference loader (default: all cores)")
    add_config_arguments(parser, skip={"name", "only_folds", "time_limit", "overwrite", "folds", "fold_seed",
                                       "epochs", "drop_bad_rows"})
    args = parser.parse_args(argv)
    for option in ("steps", "warmup"):
        if getattr(args, option) < (1 if option == "steps" else 0):
            raise ConfigError(f"--{option} {getattr(args, option)}: must be at least {1 if option == 'steps' else 0}")
    if args.reference_workers is not None and args.reference_workers < 0:
        raise ConfigError(f"--reference-workers {args.reference_workers}: must be >= 0")
    cfg = config_from_command(args, Project.at())
    announce_device(cfg.device, None, cfg.precision, cfg.num_threads)
    summary = benchmark(cfg, steps=args.steps, warmup=args.warmup, reference_workers=args.reference_workers)
    print_table(summary)
    log(json.dumps(summary))
    return 1 if summary["measurement_faults"] else 0


if __name__ == "__main__":
    from kit.commands import run_module

    raise SystemExit(run_module("bench", main))
