"""The command line's contract, for every command: --help shows the options with their real defaults, and a
user's mistake is one `error: ...` line with exit code 2 (no traceback), before any work starts."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kit.__main__ import COMMANDS, main


def test_the_command_list_names_every_command(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in listing
    assert main(["kaggle", "--help"]) == 0
    shown = "".join(capsys.readouterr())
    assert all(f"  {name} " in shown for name in ("bundle", "run", "output"))
    assert main(["frobnicate"]) == 2 and "error: unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("command, shown", [
    ("cv", ["MODEL", "--model", "--epochs EPOCHS", "(default: 20, or the model's epoch cap; 4 on the synthetic sample)",
            "dlib_face (112 px)", "--devices"]),
    ("tune", ["--trials", "--time-limit", "--folds-per-trial", "default: 2)", "--storage"]),
    ("ensemble", ["RUN", "--weights", "(default: auto)", "--out"]),
    ("best", ["--time-limit", "--models", "dlib_face,dlib_age", "--min-epochs"]),
    ("bench", ["--model", "--steps", "(default: 30)", "--reference-workers"]),
    ("download", ["--competition", "--dest", "--force"]),
    ("submit", ["--message", "--dry-run", "--poll-timeout", "(default: 1800.0s)"]),
    ("submissions", ["--competition", "--no-refresh"]),
    ("sample", ["folder", "--train", "(default: 400)"]),
    ("kaggle bundle", ["--extras", "--find-links"]),
    ("kaggle run", ["--kernel", "--gpu", "--poll-interval"]),
    ("kaggle output", ["--version", "--poll-timeout"]),
])
def test_every_command_has_help_with_its_defaults(command, shown, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in shown:
        assert expected in text, (command, expected)


def test_kaggle_subcommands_describe_themselves(capsys):
    for subcommand, description in (("bundle", "Build the kit's wheel"), ("run", "Run facekit commands in a Kaggle")):
        with pytest.raises(SystemExit):
            main(["kaggle", subcommand, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert description in text and "The Kaggle commands' command lines" not in text


@pytest.mark.parametrize("module, argv, expected, code", [
    ("kit.cv", ["--help"], "usage: facekit cv", 0),
    ("kit.bench", ["--help"], "usage: facekit bench", 0),
    ("kit.cv", ["scratch", "--data", "/no/such/data"], "error: --data /no/such/data: no such file or folder", 2),
])
def test_python_dash_m_on_a_command_module_is_that_command(module, argv, expected, code, tmp_path):
    env = {**os.environ, "FACEKIT_ROOT": str(tmp_path)}
    env.pop("FACEKIT_CV_WORKER", None)
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                          text=True, env=env, cwd=Path(__file__).parents[1], timeout=300)
    assert done.returncode == code, done.stderr
    assert expected in done.stdout + done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A project root of its own, and no Kaggle credentials of the user's."""
    monkeypatch.setenv("FACEKIT_ROOT", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / "kaggle"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["cv", "scratch", "--data", "/no/such/data"], "error: --data /no/such/data: no such file or folder"),
    (["cv", "scratch", "--model", "resnet18"], "error: the model is given twice"),
    (["cv", "scratch", "--seed", "-1"], "error: --seed -1: must be >= 0"),
    (["cv", "scratch", "--time-limit", "nan"], "error: --time-limit nan: must be a finite number"),
    (["tune", "--trials", "-1", "--model", "scratch"], "error: --trials must be >= 0"),
    (["ensemble", "nope/nothing"], "error: run 'nope/nothing' not found"),
    (["best", "--time-limit", "5m", "--epochs", "3"], "error: --epochs is planned from the time limit"),
    (["best", "--time-limit", "5m", "--models", "scratch:size=80.5"], "size='80.5': must be an integer"),
    (["bench", "--steps", "0"], "error: --steps 0: must be at least 1"),
    (["download"], "error: No usable Kaggle credentials"),
    (["submit", "submissions/none.csv"], "none.csv: no such file"),
    (["sample", "."], "exists; the sample is written only into a new folder"),
    (["kaggle", "frobnicate"], "facekit kaggle has no subcommand 'frobnicate'"),
    (["kaggle", "run", "--", "cv", "scratch"], "no bundle at"),
])
def test_every_command_reports_a_mistake_as_one_error_line(argv, message, isolated, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_damaged_ledger_is_named_by_submissions(isolated, capsys):
    (isolated / "submissions").mkdir()
    (isolated / "submissions" / "ledger.csv").write_text("a,b\n1,2\n")
    assert main(["submissions", "--no-refresh"]) == 2
    assert "ledger.csv: first line is 'a,b'" in capsys.readouterr().err


def test_an_unparsable_value_is_argparse_s_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["cv", "scratch", "--epochs", "many"])
    assert done.value.code == 2 and "--epochs: invalid int value: 'many'" in capsys.readouterr().err


def test_run_sh_refuses_to_set_up_a_venv_the_disk_cannot_hold(tmp_path):
    """A fresh clone on a nearly full disk hears how much space .venv needs before pip starts."""
    repo = Path(__file__).resolve().parents[1]
    for name in ("run.sh", "requirements.txt"):
        shutil.copy2(repo / name, tmp_path / name)
    done = subprocess.run(["bash", str(tmp_path / "run.sh"), "--help"], capture_output=True, text=True,
                          env={**os.environ, "FACEKIT_VENV_GB": "1000000"}, timeout=60)
    assert done.returncode == 1
    assert "run.sh: .venv needs about 1000000 GB and only" in done.stderr and "FACEKIT_VENV_GB=0" in done.stderr
    assert not (tmp_path / ".venv").exists()
