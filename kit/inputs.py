"""What a model is fed, in training and prediction: images through the kit's data path, or a cached
frozen trunk's features (kit/trunk.py). fit_fold and the throughput steps `best` and `bench` time use the
same two classes, so the timed step is the one cv runs.

    inputs.training(rows, strength, generator) -> a training batch (rows past the train images: test images)
    inputs.predict(model, "train" | "test", rows, **prediction options) -> (probability of male, age)
"""
from __future__ import annotations

import numpy as np
import torch

from kit.augment import prepare
from kit.predict import ImageSource, MixedSource, predict
from kit.trunk import TrunkFeatures, predict_from_trunk


class ImageInputs:
    """What a fold's model is fed: the images, through the kit's data path (cache -> device -> augmentation)."""

    def __init__(self, train_images: np.ndarray, test_images: np.ndarray, device: torch.device, channels_last: bool):
        self.train = ImageSource(train_images, device, channels_last)
        self.test = ImageSource(test_images, device, channels_last)
        self.mixed = MixedSource(self.train, self.test)   # training rows from len(train) on: pseudo-labelled tests
        self.channels_last = channels_last

    def training(self, rows: np.ndarray, strength: str, generator: torch.Generator) -> torch.Tensor:
        return prepare(self.mixed.batch(rows), strength=strength, generator=generator, channels_last=self.channels_last)

    def predict(self, model, split: str, rows: np.ndarray, **options):
        return predict(model, self.train if split == "train" else self.test, rows, **options)


class TrunkInputs:
    """What a fold's model is fed with a cached frozen trunk (kit/trunk.py): the trunk's features."""

    def __init__(self, features: TrunkFeatures, blocks: int):
        self.features, self.blocks = features, blocks

    def training(self, rows: np.ndarray, strength: str, generator: torch.Generator) -> torch.Tensor:
        # The same draw as kit.augment's flips: each image mirrored with probability one half.
        flipped = torch.rand(len(rows), generator=generator) < 0.5 if strength == "flip" else None
        return self.features.batch(rows, flipped)

    def predict(self, model, split: str, rows: np.ndarray, *, channels_last: bool, **options):
        return predict_from_trunk(model, self.features, split, rows, blocks=self.blocks, **options)
