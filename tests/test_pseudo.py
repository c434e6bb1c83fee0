"""Pseudo-labels: fold k learns only from labels made by models that never saw fold k's rows."""
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kit.config import TrainConfig
from kit.cv import run_cv
from kit.errors import RunError
from kit.paths import Project
from kit.pseudo import pseudo_labels


@pytest.fixture(scope="module")
def twin_competition(tmp_path_factory):
    """Noise images with random labels, nothing to learn but each image itself; the test set holds the very
    same images. A model that memorises its training rows knows their twins in the test set."""
    folder = tmp_path_factory.mktemp("twins") / "face_dataset"
    rng = np.random.default_rng(0)
    n = 60
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"train/{i}.png")
        shutil.copy(folder / f"train/{i}.png", folder / f"test/{i}.png")
    pd.DataFrame({"id": range(n), "full_path": [f"train/{i}.png" for i in range(n)],
                  "gender": rng.integers(0, 2, n), "age": rng.integers(1, 80, n)}).to_csv(folder / "train.csv",
                                                                                        index=False)
    test = pd.DataFrame({"id": [f"t{i}" for i in range(n)], "full_path": [f"test/{i}.png" for i in range(n)]})
    test.to_csv(folder / "test.csv", index=False)
    test[["id"]].assign(gender=1, age=30).to_csv(folder / "sample_submission.csv", index=False)
    return folder


MEMORISE = dict(model="scratch", folds=3, epochs=20, size=16, batch_size=8, num_threads=1, augment="none",
                schedule="onecycle", lr_backbone=3e-3, optimizer="adamw")


def test_fold_k_learns_from_fold_k_s_models_only_so_a_memoriser_gains_nothing(twin_competition, tmp_path):
    root = tmp_path / "project"
    base = TrainConfig(data=str(twin_competition), **MEMORISE)
    first = run_cv(TrainConfig(**{**base.to_dict(), "name": "round1"}), root=root)
    honest = run_cv(TrainConfig(**{**base.to_dict(), "name": "round2", "pseudo_labels": ["scratch/round1"]}),
                    root=root)
    # The mistake this guards against: labelling the test images with what the submission uses, the mean of
    # every fold's model, fold k's own rows' twins included.
    leaky_dir = root / "runs/scratch/leaky"
    shutil.copytree(first.run_dir, leaky_dir)
    tests = [pd.read_csv(first.run_dir / f"test_fold{k}.csv") for k in range(3)]
    mean = tests[0].assign(gender_prob=np.mean([t.gender_prob for t in tests], 0),
                           age_pred=np.mean([t.age_pred for t in tests], 0))
    for k in range(3):
        mean.to_csv(leaky_dir / f"test_fold{k}.csv", index=False)
    leaky = run_cv(TrainConfig(**{**base.to_dict(), "name": "round2-leaky", "pseudo_labels": ["scratch/leaky"]}),
                   root=root)
    assert leaky.scores.gender_f1 > 0.8                                # the leak would show as skill...
    assert honest.scores.gender_f1 < first.scores.gender_f1 + 0.1      # ...the honest second round has none
    assert leaky.scores.score > honest.scores.score + 0.1


def test_the_labels_of_fold_k_are_fold_k_s_test_predictions_averaged_over_runs(twin_competition, tmp_path):
    root = tmp_path / "project"
    cfg = TrainConfig(data=str(twin_competition), **{**MEMORISE, "epochs": 1})
    a = run_cv(TrainConfig(**{**cfg.to_dict(), "name": "a"}), root=root)
    b = run_cv(TrainConfig(**{**cfg.to_dict(), "name": "b", "seed": 7}), root=root)
    from kit.data import load_competition

    comp = load_competition(str(twin_competition), project_root=root, size=16)[0]
    config = pd.read_json(a.run_dir / "config.json", typ="series")
    labels, digest = pseudo_labels(["scratch/a", str(b.run_dir)], project=Project.at(root), test=comp.test,
                                   folds_sha256=config["folds_sha256"], n_folds=3)
    for k in range(3):
        expected = (pd.read_csv(a.run_dir / f"test_fold{k}.csv").gender_prob
                    + pd.read_csv(b.run_dir / f"test_fold{k}.csv").gender_prob) / 2
        assert np.allclose(labels[k]["gender_prob"], expected)
        assert (labels[k]["cache_index"] == comp.test["cache_index"]).all()
    with pytest.raises(RunError, match="made on other folds"):
        pseudo_labels(["scratch/a"], project=Project.at(root), test=comp.test, folds_sha256="other", n_folds=3)
    # A changed first round is another second round: the labels' hash is part of the run's data fingerprint.
    assert len(digest) == 16
