"""Notebook mode (kit/notebook.py): inside a Kaggle notebook the data is under /kaggle/input (read-only) and
everything the kit writes goes to /kaggle/working. $FACEKIT_KAGGLE_ROOT points /kaggle at a temporary
folder here; tests/test_kaggle_kernels.py runs the kit under the real /kaggle paths in a sandbox."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from kit import notebook, paths
from kit.__main__ import main as facekit
from kit.data import locate
from kit.errors import DataError
from kit.files import sha256_file
from kit.folds import folds_for
from kit.paths import DEFAULT_COMPETITION, Project
from kit.submission import validate_submission_file

SLUG = DEFAULT_COMPETITION


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """An empty /kaggle: input/ and working/."""
    root = tmp_path / "kaggle"
    (root / "input").mkdir(parents=True)
    (root / "working").mkdir()
    for name in ("FACEKIT_ROOT", "KAGGLE_COMPETITION", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(paths.KAGGLE_ROOT_ENV, str(root))
    return root


def mount(kaggle, *parts: str, source) -> None:
    """Copy a competition folder to /kaggle/input/<parts...> (as Kaggle mounts an input)."""
    shutil.copytree(source, kaggle.joinpath("input", *parts))


def test_outputs_go_to_working_unless_facekit_root_says_otherwise(kaggle, monkeypatch, tmp_path):
    assert notebook.in_notebook() and Project.at().root == kaggle / "working"
    monkeypatch.setenv("FACEKIT_ROOT", str(tmp_path / "elsewhere"))
    assert Project.at().root == tmp_path / "elsewhere"
    monkeypatch.delenv("FACEKIT_ROOT")
    monkeypatch.setenv(paths.KAGGLE_ROOT_ENV, str(tmp_path / "no-kaggle-here"))
    assert not notebook.in_notebook() and Project.at().root != tmp_path / "no-kaggle-here" / "working"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")    # Kaggle sets it in every session
    assert notebook.in_notebook()


@pytest.mark.parametrize("parts, inner", [((SLUG,), ()), ((SLUG,), ("face_dataset",)),
                                          (("competitions", SLUG), ("face_dataset",)),
                                          (("some-upload",), ("face_dataset",))])
def test_the_competition_is_found_under_input(kaggle, tiny_competition, parts, inner):
    mount(kaggle, *parts, *inner, source=tiny_competition)
    (kaggle / "input" / "facekit-bundle" / "wheels").mkdir(parents=True)   # an attached dataset: no train.csv
    folder, name, _ = locate(None, project_root=kaggle / "working")
    assert folder == kaggle.joinpath("input", *parts, *inner) and name == parts[-1]


def test_several_inputs_the_named_one_or_an_error(kaggle, tiny_competition, monkeypatch):
    mount(kaggle, "other-data", "face_dataset", source=tiny_competition)
    mount(kaggle, SLUG, "face_dataset", source=tiny_competition)
    assert locate(None, project_root=kaggle / "working")[0] == kaggle / "input" / SLUG / "face_dataset"
    monkeypatch.setenv("KAGGLE_COMPETITION", "other-data")
    assert locate(None, project_root=kaggle / "working")[1] == "other-data"
    monkeypatch.setenv("KAGGLE_COMPETITION", "a-third")
    with pytest.raises(DataError, match="several inputs .* none is named 'a-third'"):
        locate(None, project_root=kaggle / "working")
    shutil.rmtree(kaggle / "input" / SLUG)
    shutil.rmtree(kaggle / "input" / "other-data")
    with pytest.raises(DataError, match="no competition files under .*Add Input"):
        locate(None, project_root=kaggle / "working")


def test_every_command_says_where_data_and_outputs_are(kaggle, tiny_competition, capsys):
    mount(kaggle, SLUG, "face_dataset", source=tiny_competition)
    assert facekit(["ensemble", "no/such-run"]) == 2
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"kaggle notebook: data {kaggle / 'input' / SLUG / 'face_dataset'} (read-only); runs, folds, "
                     f"caches and submissions in {kaggle / 'working'}")


def fake_run(root, sample: pd.DataFrame, train: pd.DataFrame, name: str, seed: int, data_dir) -> None:
    rng = np.random.default_rng(seed)
    path = root / "runs" / "scratch" / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model": "scratch", "name": name, "competition": SLUG,
                                                  "data_dir": str(data_dir), "folds_file": "folds/x.csv",
                                                  "folds_sha256": "f" * 64, "n_folds": 2}))
    train.assign(gender_prob=rng.uniform(0, 1, len(train)),
                 age_pred=train["age"] + rng.normal(0, 5, len(train))).to_csv(path / "oof.csv", index=False)
    for k in range(2):
        pd.DataFrame({"id": sample["id"], "gender_prob": rng.uniform(0, 1, len(sample)),
                      "age_pred": rng.uniform(1, 90, len(sample))}).to_csv(path / f"test_fold{k}.csv", index=False)


def test_ensemble_leaves_submission_csv_in_working(kaggle, tiny_competition):
    mount(kaggle, SLUG, "face_dataset", source=tiny_competition)
    data = kaggle / "input" / SLUG / "face_dataset"
    sample = pd.read_csv(data / "sample_submission.csv")
    train = pd.read_csv(data / "train.csv")[["id", "gender", "age"]].assign(fold=lambda f: np.arange(len(f)) % 2)
    working = kaggle / "working"
    fake_run(working, sample, train, "a", 1, data)
    fake_run(working, sample, train, "b", 2, "/kaggle/input/gone")   # a member whose data_dir is elsewhere
    assert facekit(["ensemble", "scratch/b", "scratch/a"]) == 0
    written = working / "submissions" / "scratch-b+scratch-a.csv"
    published = working / "submission.csv"
    assert published.read_bytes() == written.read_bytes()
    validate_submission_file(published, data / "sample_submission.csv")
    sidecar = json.loads((working / "submission.json").read_text())
    assert sidecar["sha256"] == sha256_file(published) and sidecar["cv_score"] > 0


def test_folds_of_the_same_ids_are_reused_under_another_name(tmp_path, capsys):
    train = pd.DataFrame({"id": [str(i) for i in range(20)], "gender": [0, 1] * 10, "age": range(20, 40)})
    folds_dir = tmp_path / "folds"
    folds_dir.mkdir()
    shipped = folds_dir / "utkface-age-gender-k2-seed42.csv"
    pd.DataFrame({"id": train["id"], "fold": [0, 1] * 10}).to_csv(shipped, index=False)
    fold, path = folds_for(train, competition=SLUG, k=2, seed=42, folds_dir=folds_dir)
    assert path == shipped and list(fold) == [0, 1] * 10 and "using" in capsys.readouterr().out
    assert not (folds_dir / f"{SLUG}-k2-seed42.csv").exists()

    other = train.assign(id=[f"x{i}" for i in range(20)])   # other ids: folds of their own
    _, path = folds_for(other, competition=SLUG, k=2, seed=42, folds_dir=folds_dir)
    assert path == folds_dir / f"{SLUG}-k2-seed42.csv"
