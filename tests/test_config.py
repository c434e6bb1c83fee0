import argparse
import json
import subprocess
from pathlib import Path

import pytest

from kit.config import TrainConfig, UserError, add_train_arguments, config_from_args, parse_duration

REPO = Path(__file__).parents[1]


def parse(argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(argv)


def test_params_file_is_overridden_by_explicit_options(tmp_path):
    params = tmp_path / "best.json"
    params.write_text(json.dumps({"value": 0.8, "params": {"lr_backbone": 0.003, "epochs": 7, "size": 80}}))
    cfg = config_from_args(parse(["--params", str(params), "--epochs", "9"]), model="scratch")
    assert (cfg.lr_backbone, cfg.epochs, cfg.size, cfg.model) == (0.003, 9, 80, "scratch")


def test_params_file_with_unknown_field_is_refused(tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(UserError, match=r"p.json: unknown field\(s\) \['learning_rate'\]"):
        config_from_args(parse(["--params", str(params)]))


def test_defaults_switch_with_the_starting_weights():
    pretrained = TrainConfig(model="resnet18", pretrained=True).resolved(sample=False)
    assert (pretrained.lr_head, pretrained.lr_backbone, pretrained.unfreeze_epoch) == (1e-4, 1e-5, 10)
    random_init = TrainConfig(model="resnet18", pretrained=False).resolved(sample=False)
    assert (random_init.lr_head, random_init.lr_backbone, random_init.unfreeze_epoch) == (1e-3, 1e-3, 0)
    assert TrainConfig(model="resnet18").resolved(sample=True).pretrained is False
    assert TrainConfig(model="resnet18").resolved(sample=False).pretrained is True
    explicit = TrainConfig(model="resnet18", pretrained=False, lr_backbone=3e-3).resolved(sample=False)
    assert explicit.lr_head == 3e-3


def test_durations():
    assert parse_duration("45m") == 2700 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration("soon")


def test_run_sh_and_module_help_list_the_commands():
    for command in (["./run.sh", "--help"], ["./run.sh", "cv", "--help"]):
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    listing = subprocess.run(["./run.sh", "--help"], cwd=REPO, capture_output=True, text=True).stdout
    for name in ("cv", "tune", "ensemble", "submit", "download", "bench"):
        assert f"  {name} " in listing


@pytest.mark.parametrize("values, message", [
    (dict(ema_decay=1.0), "--ema-decay 1.0: must be in"),
    (dict(model="scratch", stem="small"), "--stem 'small': only resnet18"),
    (dict(age_target="histogram"), "--age-target 'histogram': must be one of regression, bins"),
    (dict(age_loss="huber"), "--age-loss 'huber': must be one of l1, mse"),
])
def test_new_recipe_options_are_checked(values, message):
    from kit.config import check_config

    with pytest.raises(UserError, match=message):
        check_config(TrainConfig(**values))


def test_recipe_options_parse_from_the_command_line():
    cfg = config_from_args(parse(["--age-target", "bins", "--age-loss", "mse", "--ema-decay", "0.998",
                                  "--stem", "small"]))
    assert (cfg.age_target, cfg.age_loss, cfg.ema_decay, cfg.stem) == ("bins", "mse", 0.998, "small")
