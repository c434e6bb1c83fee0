import pytest
import torch

from kit.errors import WeightsError
from kit.models import MODELS, create_model
from kit.models.registry import MIN_SIZE
from kit.models.weights import imagenet_weights_file


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("above_the_smallest", [0, 32])
def test_every_model_gives_two_heads_from_its_smallest_size_up(name, above_the_smallest):
    size = max(MIN_SIZE[name], 32) + above_the_smallest
    model = create_model(name, pretrained=False).eval()
    with torch.no_grad():
        logits, age = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 2) and age.shape == (2,)


def test_a_size_below_a_model_s_smallest_is_refused_before_any_work():
    from kit.config import TrainConfig
    from kit.errors import ConfigError
    from kit.models import check_model_config

    with pytest.raises(ConfigError, match="--size 64: dlib_face needs inputs of at least 104 px"):
        check_model_config(TrainConfig(model="dlib_face", size=64))


def test_resnet18_loads_a_local_torchvision_state_dict(tmp_path):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.nn.init.constant_(reference.conv1.weight, 0.125)
    path = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", weights=str(path))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    random_init = create_model("resnet18", pretrained=False)
    assert not torch.equal(model.backbone.conv1.weight, random_init.backbone.conv1.weight)


def test_a_kit_checkpoint_loads_back_whole(tmp_path):
    trained = create_model("scratch")
    torch.nn.init.constant_(trained.age_head.bias, 3.0)
    torch.save({"model": trained.state_dict(), "epoch": 4}, tmp_path / "best.pt")
    model = create_model("scratch", weights=str(tmp_path / "best.pt"))
    assert model.age_head.bias.item() == 3.0


def test_weights_that_do_not_fit_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth"):
        create_model("resnet18", weights=str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        create_model("resnet18", weights=str(tmp_path / "junk.pth"))


def test_offline_imagenet_download_names_the_file_and_the_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(WeightsError) as caught:
        create_model("resnet18", pretrained=True)
    message = str(caught.value)
    assert str(imagenet_weights_file()) in message and str(tmp_path) in message
    assert "TORCH_HOME" in message and "--weights" in message and "--no-pretrained" in message


def test_scratch_has_no_pretrained_weights():
    with pytest.raises(WeightsError, match="no pretrained weights"):
        create_model("scratch", pretrained=True)


def test_the_age_head_can_output_bins():
    model = create_model("resnet18", pretrained=False, age_outputs=121).eval()
    with torch.no_grad():
        logits, age = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 2) and age.shape == (2, 121)


def test_small_stem_keeps_twice_the_resolution():
    features = {}
    standard = create_model("resnet18", pretrained=False).eval()
    small = create_model("resnet18", pretrained=False, stem="small").eval()
    for name, model in (("standard", standard), ("small", small)):
        model.backbone.layer4.register_forward_hook(lambda m, i, out, name=name: features.update({name: out.shape}))
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
    assert features["standard"][-2:] == (2, 2) and features["small"][-2:] == (4, 4)
    assert small.backbone.conv1.kernel_size == (3, 3) and small.backbone.conv1.stride == (1, 1)


def test_small_stem_loads_imagenet_shaped_weights_except_conv1(tmp_path):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.nn.init.constant_(reference.layer1[0].conv1.weight, 0.25)
    torch.save(reference.state_dict(), tmp_path / "resnet18-local.pth")
    model = create_model("resnet18", weights=str(tmp_path / "resnet18-local.pth"), stem="small")
    assert torch.equal(model.backbone.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert model.backbone.conv1.weight.shape == (64, 3, 3, 3)


def test_scratch_has_no_stem_to_change():
    from kit.errors import UserError

    with pytest.raises(UserError, match="--stem small"):
        create_model("scratch", stem="small")
