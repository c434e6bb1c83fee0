"""The original report's CNN, trained from random initialisation."""
from __future__ import annotations

from torch import nn

import kit.models.weights as weights_io
from kit.models.card import ModelCard
from kit.models.registry import FaceModel, register_model

CARD = ModelCard(
    "scratch", network="the original report's CNN: 3 conv blocks, a 4x4 pool, 256 units", licence="MIT",
    input_size=64, gmac=0.159,
    # Its measured 7-epoch full run's recipe (docs/experiments.md, "Measured on the real data").
    recipe=dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", lr_backbone=3e-3, augment="light",
                tta=True))


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.MaxPool2d(2))


@register_model(CARD)
def scratch(*, pretrained: bool, weights: str | None, age_outputs: int) -> FaceModel:
    """Three Conv-BN-ReLU-MaxPool blocks (64, 128, 256 channels) and a fully connected layer.

    An adaptive pool to 4x4 before the classifier keeps a coarse layout of the face (where hair
    and wrinkles are) and lets the model run at any input size.
    """
    backbone = nn.Sequential(conv_block(3, 64), conv_block(64, 128), conv_block(128, 256),
                             nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                             nn.Linear(256 * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.3))
    model = FaceModel(backbone, 256, age_outputs=age_outputs)
    if weights:
        weights_io.load_weights(model, weights)
    return model
