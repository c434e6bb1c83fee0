"""timm.NAME, tested against a stand-in `timm` package written here (timm itself is an optional extra the test
environment does not install): the kit's side of it, the card from a pretrained_cfg, the input adapter, the
weights from a file in timm's format or a kit checkpoint, the message offline, and the message without timm."""
import importlib.util
import sys
import textwrap

import pytest
import torch

from kit.errors import ConfigError, WeightsError
from kit.models import card, create_model, timm_models

FAKE_TIMM = '''
import torch
from torch import nn

from . import models


class TinyNet(nn.Module):
    """A network as timm makes one with num_classes=0: pooled features out, their width in num_features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.num_features = 8

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def list_models(pretrained=False):
    return ["tinynet.fake_in1k"]


def create_model(name, pretrained=False, num_classes=1000, pretrained_cfg_overlay=None):
    assert num_classes == 0
    net = TinyNet()
    if pretrained:
        file = (pretrained_cfg_overlay or {}).get("file")
        if file is None:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        net.load_state_dict(torch.load(file))
    return net
'''
FAKE_MODELS = '''
class PretrainedCfg:
    input_size, min_input_size, fixed_input_size = (3, 64, 64), None, False
    mean, std, license = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "apache-2.0"
    hf_hub_id, url, tag = "timm/tinynet", None, "fake_in1k"


def get_pretrained_cfg(name):
    return PretrainedCfg() if name.startswith("tinynet") else None
'''


@pytest.fixture
def fake_timm(tmp_path, monkeypatch):
    package = tmp_path / "timm"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_TIMM))
    (package / "models.py").write_text(textwrap.dedent(FAKE_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == "timm"]:
        del sys.modules[name]
    timm_models.card.cache_clear()


def test_the_card_comes_from_the_pretrained_cfg(fake_timm):
    model_card = card("timm.tinynet.fake_in1k")
    assert (model_card.input_size, model_card.min_size, model_card.fixed_size) == (224, 32, False)
    assert (model_card.mean, model_card.licence, model_card.weights.file) == ((0.5,) * 3, "apache-2.0",
                                                                             "hf-hub:timm/tinynet")
    assert model_card.gmac == pytest.approx(8 * 27 * 111 * 111 / 1e9, rel=1e-3)   # counted: its one convolution
    assert timm_models.names() == ["tinynet.fake_in1k"]
    with pytest.raises(ConfigError, match="timm has no pretrained weights of that name"):
        card("timm.nothing_like_it")


def test_weights_in_timm_s_format_or_a_kit_checkpoint_load_and_the_input_is_adapted(fake_timm, tmp_path):
    import timm

    reference = timm.create_model("tinynet.fake_in1k", num_classes=0)
    torch.nn.init.constant_(reference.conv.weight, 0.125)
    torch.save(reference.state_dict(), tmp_path / "tinynet.pth")
    model = create_model("timm.tinynet.fake_in1k", weights=str(tmp_path / "tinynet.pth"), age_outputs=3)
    adapter, network = model.backbone   # the weights expect (x - 0.5) / 0.5, the kit feeds ImageNet's
    assert torch.equal(network.conv.weight, reference.conv.weight)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(adapter(x), ((x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
                                        + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) - 0.5) / 0.5, atol=1e-6)
    gender, age = model(x)
    assert gender.shape == (2, 2) and age.shape == (2, 3)
    torch.save({"model": model.state_dict()}, tmp_path / "best.pt")
    assert torch.equal(create_model("timm.tinynet.fake_in1k", weights=str(tmp_path / "best.pt"),
                                    age_outputs=3).age_head.weight, model.age_head.weight)


def test_offline_the_message_names_the_cache_and_the_ways_out(fake_timm):
    with pytest.raises(WeightsError) as caught:
        create_model("timm.tinynet.fake_in1k", pretrained=True)
    message = str(caught.value)
    assert message.startswith("weights for timm.tinynet.fake_in1k cannot be had (OSError: We couldn't connect")
    assert all(way in message for way in ("hf-hub:timm/tinynet", "HF_HOME", "--weights", "--no-pretrained"))


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_without_timm_the_message_says_how_to_get_it():
    with pytest.raises(ConfigError, match='model \'timm.convnext_tiny\': timm is not installed: pip install '
                                          '"facekit\\[timm\\]"'):
        card("timm.convnext_tiny")
    assert timm_models.names() == []
