"""torchvision's classification models as `torchvision.NAME`: every name `torchvision.models.list_models` gives
(convnext_tiny, efficientnet_v2_s, resnet50, regnet_y_800mf, vit_b_16, ...) with the kit's two heads on the
features its ImageNet classifier took.

Each card comes from torchvision's metadata of the name's DEFAULT weights: the file, the smallest input, the
ImageNet accuracy, the multiply-accumulates (torchvision's "_ops" at the weights' crop size, scaled to the card's
input size by area). The weights come from torchvision's cache, a file of the same name under /kaggle/input, a
download, or --weights FILE (torchvision's own state dict, or a kit checkpoint); kit/models/weights.py looks.

The network is built as torchvision builds it for those weights, loaded, and then taken apart where its forward
is a chain: its stem and blocks become `units`, what follows them (the pooling) stays as `tail`, so
--frozen-trunk and the trunk cache work on ResNets, RegNets, ConvNeXts, EfficientNets, MobileNets, VGGs,
DenseNets, Swin and MaxViT as on dlib's networks. The others (ViT, GoogLeNet, Inception, ShuffleNet) train whole.

Which of them best trains first on a GPU (GPU_FIRST): no GPU figures can be measured here, so the choice rests on
what is known. On UTKFace at 200-256 px the backbone and its pretraining decide the score (Paplham and Franc,
CVPR 2024: more than the loss). convnext_tiny first: 82.5% ImageNet top-1 for 4.5 GMAC at 224 px, a modern
CNN that fine-tunes well on small data sets and takes any input size. efficientnet_v2_s second: 84.2% for 2.9
GMAC at 224 px, and another family, whose errors differ, so the blend gains. Not first: vit_b_16 (81.1% for
17.6 GMAC, 224 px only, and ViTs want more data or stronger augmentation than 18k faces to fine-tune well) and
resnet50 (80.9%, an older design). The dlib networks, face-pretrained and installed, are the GPU's spares
(kit/best/members.py).
"""
from __future__ import annotations

import difflib
import functools
import re

from torch import nn

import kit.models.weights as weights_io
from kit.errors import ConfigError, WeightsError
from kit.models.card import ModelCard, Weights, empty_weights
from kit.models.registry import FaceModel, Family, register_family

GPU_FIRST = ("convnext_tiny", "efficientnet_v2_s")   # best's default members on a GPU, in this order (see above)
# UTKFace's images are 200 px: past that, upscaling adds cost and no detail. Networks whose smallest input is
# larger, or that take one size only, train at theirs.
INPUT_SIZE = 224
# What the cards' recipe is: the one measured best here for every network that starts pretrained (dlib_age,
# dlib_face) and for resnet18 from random init (docs/experiments.md): AdamW, one-cycle, flips, MSE on age bins,
# flipped test-time views. Unmeasured on these backbones.
RECIPE = dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment="flip", age_loss="mse",
              age_target="bins", tta=True)
# One epoch of heads only at 1e-3, so that random heads send no large gradients into the pretrained layers, then
# everything at 1e-4, AdamW's usual rate for fine-tuning an ImageNet backbone at batch 64. Unmeasured here.
IMAGENET_RATES = dict(lr_head=1e-3, lr_backbone=1e-4, unfreeze_epoch=1)
FIXED_SIZE = ("vision_transformer", "maxvit")   # builder modules whose networks take their input size only


def names() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def default_weights(name: str):
    import torchvision.models

    return torchvision.models.get_model_weights(name).DEFAULT


def builder_module(name: str) -> str:
    """resnet, convnext, vision_transformer, ...: the torchvision module that builds `name`."""
    import torchvision.models

    return torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]


def architecture(name: str, weights) -> nn.Module:
    """The network as torchvision's builder makes it for `weights` (the same options), at random init."""
    import torchvision.models

    options = {}
    module = builder_module(name)
    if module in ("googlenet", "inception"):   # ported from TensorFlow: they map ImageNet's normalisation to theirs
        options = dict(transform_input=True, aux_logits=False, init_weights=False)
    elif module == "vision_transformer":
        options = dict(image_size=weights.meta["min_size"][0])
    elif module == "maxvit":
        options = dict(input_size=weights.meta["min_size"])
    return torchvision.models.get_model(name, weights=None, num_classes=len(weights.meta["categories"]), **options)


def drop_classifier(net: nn.Module, classes: int) -> int:
    """Replace the layer that maps features to the ImageNet classes with an identity; its input width."""
    found = [(name, m) for name, m in net.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == classes
             or isinstance(m, nn.Conv2d) and m.out_channels == classes]
    if len(found) != 1:
        raise RuntimeError(f"{type(net).__name__}: {len(found)} layers give the {classes} classes, expected one")
    name, layer = found[0]
    parent, _, attribute = name.rpartition(".")
    setattr(net.get_submodule(parent), attribute, nn.Identity())
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def take_units(net: nn.Module) -> list[nn.Module]:
    """The stem and blocks of a network whose forward runs them one after the other, taken out of it (replaced by
    identities, so that `net` then runs only what follows them); [] where its forward is no such chain."""
    for chain in ("features", "layers"):   # ConvNeXt, EfficientNet, MobileNet, VGG, DenseNet, Swin; MNASNet
        if isinstance(getattr(net, chain, None), nn.Sequential):
            units = list(getattr(net, chain))
            setattr(net, chain, nn.Identity())
            return units
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):   # ResNet, ResNeXt, Wide ResNet
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        blocks = [block for i in range(1, 5) for block in getattr(net, f"layer{i}")]
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(net, part, nn.Identity())
        return [stem, *blocks]
    if isinstance(getattr(net, "trunk_output", None), nn.Sequential):   # RegNet
        units = [net.stem, *(block for stage in net.trunk_output for block in stage)]
        net.stem, net.trunk_output = nn.Identity(), nn.Identity()
        return units
    if isinstance(getattr(net, "blocks", None), nn.ModuleList) and hasattr(net, "stem"):   # MaxViT
        units = [net.stem, *net.blocks]
        net.stem, net.blocks = nn.Identity(), nn.ModuleList()
        return units
    return []


class Chain(nn.Module):
    """A torchvision network as the kit's backbone: its `units` (stem and blocks, in order; none where it is not a
    chain) then `tail` (the rest of the network, up to where its classifier was)."""

    def __init__(self, units: list[nn.Module], tail: nn.Module):
        super().__init__()
        self.units = nn.Sequential(*units)
        self.tail = tail

    def forward(self, x):
        return self.tail(self.units(x))

    def trunk(self, x, blocks: int):
        """The stem and the first `blocks` blocks (what --frozen-trunk freezes, and caches)."""
        return self.units[:blocks + 1](x)

    def rest(self, x, blocks: int):
        return self.tail(self.units[blocks + 1:](x))

    def trunk_modules(self, blocks: int) -> list[nn.Module]:
        return list(self.units[:blocks + 1])


# torchvision's DenseNet files name some layers as an older torchvision did ("norm.1" for "norm1"); its own
# loader renames them with this pattern (torchvision/models/densenet.py).
DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
AUX_HEADS = ("aux1.", "aux2.", "AuxLogits.")   # GoogLeNet's and Inception's auxiliary classifiers: not built here


def load_torchvision_state(net: nn.Module, state: dict, *, model: str, source: str) -> None:
    state = {DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items() if not k.startswith(AUX_HEADS)}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise WeightsError(f"{source} does not fit {model}: {first[0].strip()}") from None


def create(name: str, *, pretrained: bool, weights: str | None, age_outputs: int) -> FaceModel:
    model, default = f"torchvision.{name}", default_weights(name)
    net = architecture(name, default)
    state = weights_io.read_state_dict(weights) if weights else None
    if state is None and pretrained:
        state = weights_io.imagenet_state_dict(default, model)
    whole_model = state is not None and weights_io.is_kit_checkpoint(state)
    if state is not None and not whole_model:
        load_torchvision_state(net, state, model=model, source=f"--weights {weights}" if weights else default.url)
    num_features = drop_classifier(net, len(default.meta["categories"]))
    face_model = FaceModel(Chain(take_units(net), net), num_features, age_outputs=age_outputs)
    if whole_model:
        weights_io.load_weights(face_model, weights)
    return face_model


@functools.cache
def card(name: str) -> ModelCard:
    """torchvision.NAME's card, from torchvision's metadata of its DEFAULT weights (its blocks counted on a network
    built with empty weights: no memory, no time)."""
    known = names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4)
        raise ConfigError(f"unknown model 'torchvision.{name}': torchvision has no classification model {name!r}"
                          + (f"; did you mean {', '.join(f'torchvision.{c}' for c in close)}?" if close else ""))
    default = default_weights(name)
    meta = default.meta
    fixed = builder_module(name) in FIXED_SIZE
    smallest = max(16, meta["min_size"][0])
    size = smallest if fixed else max(INPUT_SIZE, smallest)
    with empty_weights():
        units = take_units(architecture(name, default))
    accuracy = meta["_metrics"]["ImageNet-1K"]["acc@1"]
    file = weights_io.hub_file(default.url).name
    return ModelCard(
        f"torchvision.{name}", network=f"torchvision's {name} ({meta['num_params'] / 1e6:.1f}M parameters)",
        licence="CC-BY-NC-4.0" if "SWAG" in default.name else "BSD-3-Clause", input_size=size,
        gmac=meta["_ops"] * (size / default.transforms().crop_size[0]) ** 2, min_size=smallest, fixed_size=fixed,
        weights=Weights(weights_io.TORCHVISION_SOURCE, file,
                        f"ImageNet-1k ({default.name}, top-1 {accuracy:.1f}%)", **IMAGENET_RATES),
        recipe=RECIPE, trunk_blocks=max(0, len(units) - 1),
        gpu_rank=GPU_FIRST.index(name) + 1 if name in GPU_FIRST else None)


register_family(Family(
    "torchvision", about="any of torchvision's classification models, from its ImageNet weights (e.g. "
                         "torchvision.convnext_tiny, 224 px)",
    cells=("`torchvision.NAME`", "any of torchvision's classification models (`python -m kit.models --all` lists "
           "their cards)", "ImageNet-1k (the name's DEFAULT weights in torchvision)",
           f"{weights_io.TORCHVISION_SOURCE} (BSD-3-Clause; SWAG weights CC-BY-NC-4.0)",
           "224, or the network's own where larger or fixed (ViT, MaxViT)", "torchvision's figure, scaled to the size"),
    names=names, card=card, create=create, featured=GPU_FIRST))
