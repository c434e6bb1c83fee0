"""TrainConfig: defaults that follow the starting weights, and checks derived from each field's metadata."""
import math

import pytest

from kit.config import (
    CHOICES,
    FIELDS,
    MEMBER_FIELDS,
    RESULT_FIELDS,
    TUNABLE_FIELDS,
    TrainConfig,
    check_config,
    check_types,
)
from kit.errors import ConfigError, UserError
from kit.models import check_model_config  # noqa: F401  (loads the model cards resolved() reads: kit/cards.py)


def test_defaults_switch_with_the_starting_weights():
    pretrained = TrainConfig(model="resnet18", pretrained=True).resolved(sample=False)
    assert (pretrained.lr_head, pretrained.lr_backbone, pretrained.unfreeze_epoch) == (1e-4, 1e-5, 10)
    random_init = TrainConfig(model="resnet18", pretrained=False).resolved(sample=False)
    assert (random_init.lr_head, random_init.lr_backbone, random_init.unfreeze_epoch) == (1e-3, 1e-3, 0)
    assert TrainConfig(model="resnet18").resolved(sample=True).pretrained is False
    assert TrainConfig(model="resnet18").resolved(sample=False).pretrained is True
    explicit = TrainConfig(model="resnet18", pretrained=False, lr_backbone=3e-3).resolved(sample=False)
    assert explicit.lr_head == 3e-3


def test_the_sample_demo_trains_fewer_epochs_unless_told():
    assert TrainConfig().resolved(sample=False).epochs == 20
    assert TrainConfig().resolved(sample=True).epochs == 4
    assert TrainConfig(epochs=9).resolved(sample=True).epochs == 9


def test_a_model_with_an_epoch_cap_trains_that_many_unless_told():
    assert TrainConfig(model="dlib_age").resolved(sample=False).epochs == 6
    assert TrainConfig(model="dlib_face").resolved(sample=False).epochs == 7
    assert TrainConfig(model="dlib_face", epochs=10).resolved(sample=False).epochs == 10
    assert TrainConfig(model="dlib_face").resolved(sample=True).epochs == 4


def test_pretrained_by_default_where_the_weights_can_be_had():
    """Installed with a package: everywhere. Downloadable (torchvision's): on real data, not in the demo."""
    for model, on_sample in (("dlib_face", True), ("torchvision.convnext_tiny", False), ("scratch", False)):
        assert TrainConfig(model=model).resolved(sample=True).pretrained is on_sample
        assert TrainConfig(model=model).resolved(sample=False).pretrained is (model != "scratch")
    imagenet = TrainConfig(model="torchvision.convnext_tiny", epochs=10).resolved(sample=False)
    assert (imagenet.lr_head, imagenet.lr_backbone, imagenet.unfreeze_epoch) == (1e-3, 1e-4, 1)


def test_metadata_derives_the_field_lists():
    assert set(RESULT_FIELDS) == set(FIELDS) - {"name", "data", "only_folds", "device", "devices", "compile",
                                                 "num_threads", "time_limit", "overwrite"}
    assert {"lr_backbone", "unfreeze_epoch", "augment", "tta", "size"} <= set(TUNABLE_FIELDS)
    assert not {"epochs", "folds", "model", "seed", "precision"} & set(TUNABLE_FIELDS)
    assert {"lr_backbone", "size", "seed", "augment"} <= set(MEMBER_FIELDS)
    assert not {"folds", "fold_seed", "data", "name", "time_limit"} & set(MEMBER_FIELDS)
    assert CHOICES["age_target"] == ("regression", "bins")
    assert TrainConfig().result_fields().keys() == set(RESULT_FIELDS)


@pytest.mark.parametrize("values, message", [
    (dict(ema_decay=1.0), r"--ema-decay 1.0: must be in \[0, 1\)"),
    (dict(age_target="histogram"), "--age-target 'histogram': must be one of regression, bins"),
    (dict(age_loss="huber"), "--age-loss 'huber': must be one of l1, mse"),
    (dict(folds=1), "--folds 1: must be >= 2"),
    (dict(lr_head=5.0), r"--lr-head 5.0: must be in \(0, 1\)"),
    (dict(weight_decay=-1.0), "--weight-decay -1.0: must be >= 0"),
    (dict(seed=-1), "--seed -1: must be >= 0"),
    (dict(num_threads=-1), "--num-threads -1: must be >= 1"),
    (dict(age_loss_weight=math.nan), "--age-loss-weight nan: must be a finite number"),
    (dict(time_limit=math.nan), "--time-limit nan: must be a finite number"),
    (dict(time_limit=0.0), "--time-limit 0.0: must be > 0"),
    (dict(epochs=1.5), r"--epochs 1.5: must be an integer, not float 1.5"),
    (dict(tta="false"), "--tta 'false': must be true or false, not str 'false'"),
    (dict(folds=None), "--folds None: may not be null"),
    (dict(name="../../x"), "--name '../../x': a run name is one folder name"),
    (dict(unfreeze_epoch=9, epochs=3), r"--unfreeze-epoch 9: must be between 0 and --epochs \(3\)"),
])
def test_bad_values_are_refused_naming_the_option(values, message):
    with pytest.raises(ConfigError, match=message):
        check_config(TrainConfig(**values))


@pytest.mark.parametrize("values, message", [
    (dict(model="vgg"), "unknown model 'vgg'"),
    (dict(model="scratch", stem="small"), "--stem small: only resnet18 has a stem to change"),
    (dict(model="dlib_face"), "--size 64: dlib_face needs inputs of at least 103 px"),
    (dict(model="dlib_age", frozen_trunk=6), "--frozen-trunk 6: dlib_age has 5 blocks to freeze"),
])
def test_what_a_model_allows_is_its_card_s_to_check(values, message):
    with pytest.raises(ConfigError, match=message):
        check_model_config(TrainConfig(**values))


def test_types_are_checked_before_a_config_is_made():
    with pytest.raises(ConfigError, match=r"x.json: epochs: must be an integer, not str '7'; "
                                          r"lr_backbone: must be a number, not str '1e-3'"):
        check_types({"epochs": "7", "lr_backbone": "1e-3"}, source="x.json")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    assert TrainConfig.from_dict({"epochs": 7, "lr_backbone": 1}).lr_backbone == 1   # an int is a number
    assert issubclass(ConfigError, UserError)
