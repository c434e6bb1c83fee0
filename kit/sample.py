"""A small synthetic competition, so that every command runs on a fresh clone with no data.

The images are SYNTHETIC cartoon faces, not photos. Gender and age are drawn into them so that a CNN
can learn them: long hair and a narrower face lean female, short hair and beards male (with 10% of
faces going against the rule); older faces get grey hair, forehead wrinkles and a longer face, young
children larger eyes and a rounder head. Scores on it say that the pipeline works, nothing more.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from kit.errors import DataError
from kit.log import log

IMAGE_SIZE = 80


def draw_face(rng: np.random.Generator, gender: int, age: float) -> Image.Image:
    s = IMAGE_SIZE
    background = tuple(int(v) for v in rng.integers(40, 220, 3))
    image = Image.new("RGB", (s, s), background)
    draw = ImageDraw.Draw(image)
    follows_rule = rng.random() > 0.10
    looks_male = gender == 1 if follows_rule else gender == 0
    youth = max(0.0, 1 - age / 14)                      # 1 for babies, 0 from 14 on
    grey = float(np.clip((age - 35) / 45, 0, 1))        # 0 up to 35, 1 at 80
    hair = np.array(rng.choice([(30, 20, 15), (90, 60, 30), (160, 120, 60), (20, 20, 20)]), float)
    hair = tuple(int(v) for v in hair * (1 - grey) + np.array([200, 200, 205]) * grey)
    skin = tuple(int(v) for v in np.array(rng.choice([(240, 200, 170), (200, 150, 110), (140, 95, 65)]))
                 + rng.integers(-12, 12, 3))
    cx, cy = s / 2 + rng.normal(0, 2), s / 2 + rng.normal(0, 2)
    half_w = s * (0.24 + (0.03 if looks_male else 0) + 0.02 * youth) * rng.uniform(0.95, 1.05)
    half_h = s * (0.29 + 0.03 * min(age, 70) / 70 - 0.02 * youth) * rng.uniform(0.95, 1.05)
    if not looks_male:  # long hair falls behind the face down to the shoulders
        draw.rounded_rectangle([cx - half_w * 1.35, cy - half_h * 1.15, cx + half_w * 1.35, s],
                               radius=int(half_w * 0.6), fill=hair)
    draw.ellipse([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=skin)
    # hair on top of the head; males get a short crop
    draw.chord([cx - half_w * 1.05, cy - half_h * 1.12, cx + half_w * 1.05, cy + half_h * (0.1 if looks_male else 0.3)],
               180, 360, fill=hair)
    eye_r = s * (0.035 + 0.025 * youth)
    for side in (-1, 1):
        ex, ey = cx + side * half_w * 0.42, cy - half_h * 0.05
        draw.ellipse([ex - eye_r, ey - eye_r * 0.7, ex + eye_r, ey + eye_r * 0.7], fill=(250, 250, 250))
        draw.ellipse([ex - eye_r * 0.45, ey - eye_r * 0.45, ex + eye_r * 0.45, ey + eye_r * 0.45], fill=(40, 30, 20))
    draw.line([cx - half_w * 0.3, cy + half_h * 0.5, cx + half_w * 0.3, cy + half_h * 0.5],
              fill=(150, 60, 60), width=2)
    if looks_male and age > 18 and rng.random() < 0.5:  # beard
        draw.chord([cx - half_w, cy - half_h * 0.2, cx + half_w, cy + half_h], 20, 160, fill=hair)
    wrinkles = int(np.clip((age - 30) / 12, 0, 4))
    for k in range(wrinkles):
        y = cy - half_h * (0.45 + 0.09 * k)
        draw.line([cx - half_w * 0.45, y, cx + half_w * 0.45, y], fill=tuple(int(v * 0.7) for v in skin), width=1)
    image = image.rotate(rng.normal(0, 5), resample=Image.BILINEAR, fillcolor=background)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6)))


def make_sample(folder: str | os.PathLike, *, n_train: int = 400, n_test: int = 100, seed: int = 0) -> Path:
    """Write a complete synthetic competition (CSV files + JPEGs) into `folder` and return it."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            gender = int(rng.integers(0, 2))
            # UTKFace-like age mix: many 20-40 year olds, some children and elderly
            age = float(np.clip(rng.choice([rng.normal(30, 9), rng.uniform(1, 14), rng.uniform(40, 85)],
                                           p=[0.6, 0.15, 0.25]), 1, 90))
            age = int(round(age))
            rel = f"{split}/{i:05d}.jpg"
            draw_face(rng, gender, age).save(folder / rel, quality=90)
            rows[split].append({"id": i, "full_path": rel, "gender": gender, "age": age})
    train = pd.DataFrame(rows["train"])
    test = pd.DataFrame(rows["test"])
    train.to_csv(folder / "train.csv", index=False)
    test[["id", "full_path"]].to_csv(folder / "test.csv", index=False)
    sample = test[["id"]].assign(gender=1, age=int(train["age"].median()))
    sample.to_csv(folder / "sample_submission.csv", index=False)
    # the hidden labels stay beside the data so that the local Kaggle server can score the sample
    test[["id", "gender", "age"]].to_csv(folder / "test_labels.csv", index=False)
    (folder / ".synthetic").write_text("synthetic sample competition made by kit.sample\n")
    return folder


def ensure_sample(folder: Path) -> Path:
    """The sample competition in `folder`, generated (atomically) on first use."""
    if (folder / ".synthetic").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sample.", dir=folder.parent))
    try:
        log(f"no competition data given: generating a SYNTHETIC sample competition in {folder} "
            "(cartoon faces, not real photos; use --data PATH or ./run.sh download for the real one)")
        make_sample(tmp)
        if folder.exists():
            raise DataError(f"{folder} exists but is not a sample competition; move it away")
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit sample", description="Write a synthetic sample competition "
                                     "(cartoon faces whose gender and age are drawn in) into a new folder.")
    parser.add_argument("folder", help="where to write it; must not exist yet")
    parser.add_argument("--train", type=int, default=400, help="labelled images (default: %(default)s)")
    parser.add_argument("--test", type=int, default=100, help="unlabelled test images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if folder.exists():
        raise DataError(f"{folder} exists; the sample is written only into a new folder")
    if args.train < 10 or args.test < 1:
        raise DataError(f"--train {args.train} --test {args.test}: need at least 10 train and 1 test image")
    make_sample(folder, n_train=args.train, n_test=args.test, seed=args.seed)
    log(f"wrote a synthetic competition with {args.train} train and {args.test} test images to {folder}")
    return 0
