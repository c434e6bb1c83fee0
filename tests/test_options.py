"""The command line's training options, derived from TrainConfig: parsing, --params files, defaults shown."""
import argparse
import json

import pytest

from kit.config import FIELDS, flag
from kit.errors import ConfigError
from kit.models import CARDS  # noqa: F401  (loads the model cards the model option lists: kit/cards.py)
from kit.options import (
    add_config_arguments,
    add_model_argument,
    config_from_args,
    given_fields,
    model_from_args,
    parse_duration,
    parse_fold_list,
)


def parse(argv):
    parser = argparse.ArgumentParser()
    add_model_argument(parser, positional=True)
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_every_field_is_an_option_with_its_real_default_in_the_help():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = " ".join(parser.format_help().split())
    for name in FIELDS:
        if name != "model":
            assert flag(name) in text
    assert "--no-tta" in text and "(default: off)" in text          # a switch, off by default
    assert "--batch-size BATCH_SIZE training batch size (default: 64; in cv, bench and best on GPUs" in text
    assert "30% of the steps" in text                                # a % in the help text survives argparse


def test_params_file_is_overridden_by_explicit_options(tmp_path):
    params = tmp_path / "best.json"
    params.write_text(json.dumps({"value": 0.8, "params": {"lr_backbone": 0.003, "epochs": 7, "size": 80}}))
    args = parse(["scratch", "--params", str(params), "--epochs", "9"])
    cfg = config_from_args(args, model=model_from_args(args))
    assert (cfg.lr_backbone, cfg.epochs, cfg.size, cfg.model) == (0.003, 9, 80, "scratch")
    assert set(given_fields(args)) == {"lr_backbone", "epochs", "size"}


def test_a_runs_config_json_works_as_params(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": "scratch", "folds_sha256": "x", "train": {"epochs": 3, "augment": "flip"}}))
    cfg = config_from_args(parse(["--params", str(config)]))
    assert (cfg.epochs, cfg.augment) == (3, "flip")


def test_a_runs_config_json_gives_its_recipe_not_how_that_command_ran(tmp_path, caplog):
    # best saves each fold's share of the hour as time_limit: a reproduction must not be cut short by it
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": "scratch", "train": {
        "epochs": 11, "size": 112, "time_limit": 498.8, "only_folds": [0], "name": "best-60m", "overwrite": False}}))
    cfg = config_from_args(parse(["--params", str(config), "--name", "again"]))
    assert (cfg.epochs, cfg.size, cfg.time_limit, cfg.only_folds, cfg.name) == (11, 112, None, None, "again")
    assert "not taken from the run" in caplog.text and "time_limit=498.8" in caplog.text
    explicit = config_from_args(parse(["--params", str(config), "--time-limit", "5m", "--only-folds", "1"]))
    assert (explicit.time_limit, explicit.only_folds) == (300.0, [1])
    plain = tmp_path / "plain.json"   # a plain object of fields is taken as the user wrote it
    plain.write_text(json.dumps({"time_limit": 60.0}))
    assert config_from_args(parse(["--params", str(plain)])).time_limit == 60.0


@pytest.mark.parametrize("content, message", [
    ({"learning_rate": 0.1}, r"p.json: unknown field\(s\) \['learning_rate'\]"),
    ({"epochs": "7"}, "p.json: epochs: must be an integer, not str '7'"),
    ({"tta": "false"}, "p.json: tta: must be true or false, not str 'false'"),
    ({"lr_backbone": "1e-3"}, "p.json: lr_backbone: must be a number, not str '1e-3'"),
    ({"folds": None}, "p.json: folds: may not be null"),
    ({"epochs": 1.5}, "p.json: epochs: must be an integer, not float 1.5"),
    ([1, 2], "p.json: expected a JSON object of TrainConfig fields"),
])
def test_params_values_are_type_checked_naming_the_file(tmp_path, content, message):
    params = tmp_path / "p.json"
    params.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        config_from_args(parse(["--params", str(params)]))


def test_missing_or_broken_params_files(tmp_path):
    with pytest.raises(ConfigError, match="--params .*nothing.json: no such file"):
        config_from_args(parse(["--params", str(tmp_path / "nothing.json")]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config_from_args(parse(["--params", str(tmp_path / "bad.json")]))


def test_recipe_options_parse_from_the_command_line():
    cfg = config_from_args(parse(["--age-target", "bins", "--age-loss", "mse", "--ema-decay", "0.998",
                                  "--stem", "small", "--only-folds", "2,0", "--time-limit", "1.5h", "--no-tta"]))
    assert (cfg.age_target, cfg.age_loss, cfg.ema_decay, cfg.stem) == ("bins", "mse", 0.998, "small")
    assert cfg.only_folds == [0, 2] and cfg.time_limit == 5400 and cfg.tta is False


def test_the_model_is_one_word_or_an_option_but_not_two_different_ones():
    assert model_from_args(parse(["dlib_age"])) == "dlib_age"
    assert model_from_args(parse(["--model", "dlib_age"])) == "dlib_age"
    assert model_from_args(parse([])) is None
    with pytest.raises(ConfigError, match="given twice"):
        model_from_args(parse(["scratch", "--model", "dlib_age"]))


def test_durations_and_fold_lists():
    assert parse_duration("45m") == 2700 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration("soon")
    assert parse_fold_list("3,1,1") == [1, 3]
    with pytest.raises(argparse.ArgumentTypeError, match="fold numbers"):
        parse_fold_list("a,b")
