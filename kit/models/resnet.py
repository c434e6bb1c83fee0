"""torchvision's ResNet18 with the kit's gender and age heads in place of its ImageNet classifier, and a small stem
for small inputs. (Every other torchvision network is torchvision.NAME: kit/models/torchvision_models.py.)"""
from __future__ import annotations

from torch import nn

import kit.models.weights as weights_io
from kit.models.card import ModelCard, Weights
from kit.models.registry import FaceModel, register_model

CARD = ModelCard(
    "resnet18", network="torchvision's ResNet18 (11.7M parameters)", licence="BSD-3-Clause", input_size=64,
    gmac=0.148, small_stem=True,
    # The original report's recipe on ImageNet weights: 10 epochs of heads only, then everything at 1e-5.
    weights=Weights(weights_io.TORCHVISION_SOURCE, "resnet18-f37072fd.pth", "ImageNet-1k (torchvision's IMAGENET1K_V1)",
                    lr_head=1e-4, lr_backbone=1e-5, unfreeze_epoch=10),
    # Measured from random init (docs/experiments.md, "What single changes did").
    recipe=dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", lr_backbone=2e-3, augment="flip",
                age_loss="mse", age_target="bins", tta=True))


@register_model(CARD)
def resnet18(*, pretrained: bool, weights: str | None, age_outputs: int, stem: str) -> FaceModel:
    """torchvision's ResNet18 with its `fc` replaced by the gender and age heads.

    stem "small": the 7x7 stride-2 convolution becomes a 3x3 stride-1 one (the max-pool stays), so the
    network downsamples by 2 instead of 4 before its first block. At 64 px the standard stem leaves a
    16x16 map for layer1 and 2x2 at the end; the small stem doubles both, at about 4x the compute.
    ImageNet's conv1 does not fit it and is left at random init."""
    from torchvision.models import ResNet18_Weights
    from torchvision.models import resnet18 as tv_resnet18

    backbone = tv_resnet18(weights=None)
    if stem == "small":
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if weights:
        state = weights_io.read_state_dict(weights)
    elif pretrained:
        state = weights_io.imagenet_state_dict(ResNet18_Weights.IMAGENET1K_V1, "resnet18")
    else:
        state = None
    whole_model = state is not None and weights_io.is_kit_checkpoint(state)
    if state is not None and not whole_model:
        replaced = ("conv1.",) if stem == "small" else ()
        weights_io.load_backbone_state(backbone, state, model="resnet18", source=weights or "ImageNet weights",
                                       skip=replaced)
    num_features = backbone.fc.in_features
    backbone.fc = nn.Identity()
    model = FaceModel(backbone, num_features, age_outputs=age_outputs)
    if whole_model:
        weights_io.load_weights(model, weights)
    return model
