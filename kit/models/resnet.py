"""torchvision's ResNet18 with the kit's gender and age heads in place of its ImageNet classifier."""
from __future__ import annotations

from torch import nn

import kit.models.weights as weights_io
from kit.models.registry import FaceModel, register_model


@register_model
def resnet18(*, pretrained: bool = True, weights: str | None = None, age_outputs: int = 1,
             stem: str = "standard") -> FaceModel:
    """torchvision's ResNet18 with its `fc` replaced by the gender and age heads.

    stem "small": the 7x7 stride-2 convolution becomes a 3x3 stride-1 one (the max-pool stays), so the
    network downsamples by 2 instead of 4 before its first block. At 64 px the standard stem leaves a
    16x16 map for layer1 and 2x2 at the end; the small stem doubles both, at about 4x the compute.
    ImageNet's conv1 does not fit it and is left at random init."""
    from torchvision.models import resnet18 as tv_resnet18

    backbone = tv_resnet18(weights=None)
    if stem == "small":
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if weights:
        state = weights_io.read_state_dict(weights)
    elif pretrained:
        state = weights_io.imagenet_state_dict()
    else:
        state = None
    whole_model = state is not None and any(k.startswith("backbone.") for k in state)   # a kit checkpoint
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
