import numpy as np
import pandas as pd
import pytest

from kit.errors import FoldsError
from kit.folds import folds_for, make_folds


def frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "gender": rng.integers(0, 2, n),
                         "age": rng.integers(1, 90, n).astype(float)})


def test_folds_are_balanced_and_stratified():
    train = frame()
    folds = make_folds(train, k=5, seed=42)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    counts = folds["fold"].value_counts()
    assert counts.max() - counts.min() <= 1
    male_share = train.assign(fold=folds["fold"]).groupby("fold")["gender"].mean()
    assert male_share.max() - male_share.min() < 0.08


def test_same_seed_same_folds_other_seed_other_folds():
    train = frame()
    assert make_folds(train, k=5, seed=1).equals(make_folds(train, k=5, seed=1))
    assert not make_folds(train, k=5, seed=1).equals(make_folds(train, k=5, seed=2))


def test_folds_file_is_written_once_and_reused(tmp_path):
    train = frame()
    fold_of, path = folds_for(train, competition="c", k=5, seed=42, folds_dir=tmp_path)
    assert path.name == "c-k5-seed42.csv"
    # A user's folds file is the truth, even if the splitter would now say otherwise.
    saved = pd.read_csv(path, dtype={"id": str})
    saved["fold"] = (saved["fold"] + 1) % 5
    saved.to_csv(path, index=False)
    again, _ = folds_for(train, competition="c", k=5, seed=42, folds_dir=tmp_path)
    assert (again.to_numpy() == (fold_of.to_numpy() + 1) % 5).all()


def test_changed_training_ids_stop_with_clear_error(tmp_path):
    folds_for(frame(), competition="c", k=5, seed=42, folds_dir=tmp_path)
    before = (tmp_path / "c-k5-seed42.csv").read_bytes()
    with pytest.raises(FoldsError, match=r"c-k5-seed42.csv was made for other training ids: 1 id"):
        folds_for(frame(301), competition="c", k=5, seed=42, folds_dir=tmp_path)
    assert (tmp_path / "c-k5-seed42.csv").read_bytes() == before


def test_rare_strata_do_not_break_small_data():
    train = frame(40)
    folds = make_folds(train, k=5, seed=0)
    assert folds["fold"].value_counts().min() >= 7
