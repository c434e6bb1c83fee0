"""The registry and its cards: every model builds and learns at its smallest input, loads weights from a file in
their own format, costs what its card says; `--help` and the README list what the registry holds."""
import re
from pathlib import Path

import pytest
import torch

from kit.errors import ConfigError, UserError, WeightsError
from kit.models import CARDS, FAMILIES, card, create_model
from kit.models import torchvision_models as tv
from kit.models.card import count_gmac, empty_weights
from kit.models.registry import table_cells
from kit.models.weights import hub_file

# One of each kind the issue names: a ResNet, a ConvNeXt, an EfficientNet, a ViT (224 px only).
TORCHVISION_SAMPLE = ["resnet18", "convnext_tiny", "efficientnet_b0", "vit_b_16"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def learns(model, size: int) -> None:
    """One forward and backward pass of two images: both heads have their shapes, and gradients reach the
    backbone's first layer."""
    gender, age = model.train()(torch.randn(2, 3, size, size))
    assert gender.shape == (2, 2) and age.shape == (2, 3)
    (gender.sum() + age.sum()).backward()
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(CARDS))
def test_every_registered_model_learns_at_its_smallest_input_and_not_below(name):
    model_card = card(name)
    model = create_model(name, age_outputs=3)
    learns(model, model_card.min_size)
    if model_card.min_size > 16:   # the card's smallest is the real one
        with pytest.raises(RuntimeError), torch.no_grad():
            model.eval()(torch.randn(1, 3, model_card.min_size - 1, model_card.min_size - 1))


@pytest.mark.parametrize("name", sorted(CARDS))
def test_every_card_states_what_its_network_costs(name):
    model_card = card(name)
    counted = count_gmac(create_model(name), model_card.input_size)
    assert model_card.gmac == pytest.approx(counted, rel=0.01)


@pytest.mark.parametrize("name", TORCHVISION_SAMPLE)
def test_torchvision_models_load_their_own_state_dict_and_learn(name, tmp_path):
    """A state dict saved by torchvision's own model (what its cache and Kaggle datasets hold) loads as --weights;
    the network learns at its smallest input; a split network's trunk and rest compute its forward."""
    import torchvision

    reference = torchvision.models.get_model(name, weights=None)
    first_conv = next(m for m in reference.modules() if isinstance(m, torch.nn.Conv2d))
    torch.nn.init.constant_(first_conv.weight, 0.125)
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    model = create_model(f"torchvision.{name}", weights=str(tmp_path / f"{name}.pth"), age_outputs=3)
    loaded = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(loaded.weight, first_conv.weight)
    model_card = card(f"torchvision.{name}")
    learns(model, model_card.min_size)
    if model_card.trunk_blocks:
        x, blocks = torch.randn(2, 3, model_card.min_size, model_card.min_size), model_card.trunk_blocks // 2
        with torch.no_grad():
            whole, split = model.eval()(x), model.from_trunk(model.trunk(x, blocks), blocks)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole, split))
    with empty_weights():   # counted on the meta device: the CPU's fused attention kernel escapes the counter
        empty = create_model(model_card.name)
    assert model_card.gmac == pytest.approx(count_gmac(empty, model_card.input_size), rel=0.01)


def smallest_of_each_builder() -> list[str]:
    """The cheapest name of every torchvision module that builds classification networks (ResNets, RegNets,
    DenseNets, Swin, ...): every way the kit takes a network apart, without building all 80."""
    cheapest = {}
    for name in tv.names():
        cost = tv.default_weights(name).meta["_ops"]
        module = tv.builder_module(name)
        if module not in cheapest or cost < cheapest[module][0]:
            cheapest[module] = (cost, name)
    return sorted(name for _, name in cheapest.values())


@pytest.mark.parametrize("name", smallest_of_each_builder())
def test_every_kind_of_torchvision_network_becomes_a_two_headed_backbone(name):
    """Built with empty weights (no memory, no compute): the classifier found and dropped, the chain split."""
    model_card = card(f"torchvision.{name}")
    with empty_weights():
        model = create_model(model_card.name, age_outputs=3)
    x = torch.zeros(2, 3, model_card.min_size, model_card.min_size, device="meta")
    gender, age = model.eval()(x)
    assert gender.shape == (2, 2) and age.shape == (2, 3)
    if model_card.trunk_blocks:
        gender, age = model.from_trunk(model.trunk(x, model_card.trunk_blocks), model_card.trunk_blocks)
        assert gender.shape == (2, 2)


def test_a_vit_takes_its_own_size_only_and_the_cards_say_so():
    from kit.config import TrainConfig
    from kit.models import check_model_config

    vit = card("torchvision.vit_b_16")
    assert (vit.fixed_size, vit.input_size, vit.trunk_blocks) == (True, 224, 0)
    with pytest.raises(ConfigError, match="--size 192: torchvision.vit_b_16 takes 224 px inputs only"):
        check_model_config(TrainConfig(model="torchvision.vit_b_16", size=192))
    with pytest.raises(ConfigError, match="--frozen-trunk 2: torchvision.vit_b_16 has 0 blocks to freeze"):
        check_model_config(TrainConfig(model="torchvision.vit_b_16", size=224, frozen_trunk=2, pretrained=True))
    check_model_config(TrainConfig(model="torchvision.convnext_tiny", size=64, frozen_trunk=7, pretrained=True))


def test_an_unknown_torchvision_name_is_refused_with_the_close_ones():
    with pytest.raises(ConfigError, match="torchvision has no classification model 'convnext_tiney'; did you mean "
                                          "torchvision.convnext_tiny"):
        card("torchvision.convnext_tiney")
    with pytest.raises(ConfigError, match="unknown model 'vgg'; registered models: .*torchvision.NAME"):
        card("vgg")


def test_imagenet_weights_come_from_the_cache_or_a_kaggle_input_folder(tmp_path, monkeypatch):
    """torchvision's cache first, then a file of the same name anywhere under /kaggle/input, no download."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FACEKIT_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    weights = tv.default_weights("squeezenet1_1")
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, **kw: pytest.fail("no download"), raising=False)
    reference = torchvision.models.squeezenet1_1()
    torch.nn.init.constant_(reference.features[0].weight, 0.25)
    attached = tmp_path / "kaggle/input/imagenet-weights/squeezenet" / hub_file(weights.url).name
    attached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), attached)
    model = create_model("torchvision.squeezenet1_1", pretrained=True)
    assert torch.equal(model.backbone.units[0].weight, reference.features[0].weight)

    monkeypatch.undo()   # the cache: torchvision's own loader reads the file it finds there
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = hub_file(weights.url)
    cached.parent.mkdir(parents=True)
    torch.nn.init.constant_(reference.features[0].weight, 0.5)
    torch.save(reference.state_dict(), cached)
    model = create_model("torchvision.squeezenet1_1", pretrained=True)
    assert torch.equal(model.backbone.units[0].weight, reference.features[0].weight)


@pytest.mark.parametrize("name, weights", [("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
                                           ("torchvision.convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1")])
def test_offline_imagenet_weights_name_the_file_and_the_ways_out(name, weights, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FACEKIT_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    enum_name, member = weights.split(".")
    member = getattr(getattr(torchvision.models, enum_name), member)

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(member), "get_state_dict", offline)
    with pytest.raises(WeightsError) as caught:
        create_model(name, pretrained=True)
    message = str(caught.value)
    assert message.startswith(f"ImageNet weights for {name} are not in the torchvision cache")
    assert str(hub_file(member.url)) in message and str(tmp_path) in message and "TORCH_HOME" in message
    assert all(way in message for way in ("/kaggle/input", "--weights", "--no-pretrained"))


def test_densenet_files_are_renamed_as_torchvision_renames_them():
    assert tv.DENSENET_OLD_KEY.sub(r"\1\2", "features.denseblock1.denselayer1.norm.1.weight") == \
        "features.denseblock1.denselayer1.norm1.weight"
    assert tv.DENSENET_OLD_KEY.sub(r"\1\2", "features.conv0.weight") == "features.conv0.weight"


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
    assert card("resnet18").weights.file == hub_file(tv.default_weights("resnet18").url).name == "resnet18-f37072fd.pth"


@pytest.mark.parametrize("name", ["scratch", "torchvision.squeezenet1_1"])
def test_a_kit_checkpoint_loads_back_whole(name, tmp_path):
    trained = create_model(name)
    torch.nn.init.constant_(trained.age_head.bias, 3.0)
    torch.save({"model": trained.state_dict(), "epoch": 4}, tmp_path / "best.pt")
    model = create_model(name, weights=str(tmp_path / "best.pt"))
    assert model.age_head.bias.item() == 3.0


def test_weights_that_do_not_fit_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth"):
        create_model("resnet18", weights=str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError, match="bad.pth does not fit torchvision.resnet18"):
        create_model("torchvision.resnet18", weights=str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        create_model("resnet18", weights=str(tmp_path / "junk.pth"))


def test_scratch_has_no_pretrained_weights_and_no_stem_to_change():
    with pytest.raises(WeightsError, match="scratch has no pretrained weights"):
        create_model("scratch", pretrained=True)
    with pytest.raises(UserError, match="--stem small: only resnet18 has a stem to change"):
        create_model("scratch", stem="small")


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


# ----------------------------------------------------------------------------- the lists of models


def test_help_lists_exactly_what_the_registry_holds(capsys):
    from kit.__main__ import main

    with pytest.raises(SystemExit):
        main(["cv", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listing = text[text.index("registered model:"):text.index("(docs/usage.md")]
    assert re.findall(r"([a-z0-9_]+) \((\d+) px\)", listing.split(";")[0]) == [
        (c.name, str(c.input_size)) for c in CARDS.values()]
    assert re.findall(r"; ([a-z]+)\.NAME:", listing) == list(FAMILIES)


def test_the_readme_model_table_is_the_cards():
    """Its rows are the registry's models and families, in its order; each row's first cells are the card's (the
    last, the measured fold-0 score, is the lab notebook's: docs/experiments.md)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    lines = readme[readme.index("## Models"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start + 2:end]]
    expected = [table_cells(c) for c in CARDS.values()] + [list(f.cells) for f in FAMILIES.values()]
    assert [row[0] for row in rows] == [cells[0] for cells in expected]
    for row, cells in zip(rows, expected):
        assert row[:len(cells)] == cells
