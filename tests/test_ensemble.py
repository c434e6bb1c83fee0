"""Ensembler: the submission validator, run loading, blending and honest (cross-fitted) CV scores."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import kit.blend as blending
from kit.__main__ import main as facekit
from kit.ensemble import blend, cv_note, write_submission
from kit.errors import RunError, SubmissionError
from kit.files import sha256_file
from kit.metric import score
from kit.rundir import load_run
from kit.submission import submission_problems, validate_submission, validate_submission_file


def main(argv):
    """`facekit ensemble ...` under the command line's contract (errors: exit 2)."""
    return facekit(["ensemble", *argv])

N_TRAIN, N_TEST, K = 120, 30, 3


# ---------------------------------------------------------------------------------------------------
# Fake competitions and runs in the harness's format

@pytest.fixture
def competition(tmp_path):
    """data/ with train labels and sample_submission.csv, and the (id, fold) assignment of a folds file."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    train = pd.DataFrame({"id": [f"tr{i}" for i in range(N_TRAIN)],
                          "gender": rng.integers(0, 2, N_TRAIN),
                          "age": rng.integers(1, 90, N_TRAIN).astype(float),
                          "fold": np.arange(N_TRAIN) % K})
    # ids deliberately not sorted, so that order mistakes show
    sample = pd.DataFrame({"id": [str(1000 - 7 * i) for i in range(N_TEST)], "gender": 1, "age": 30})
    sample.to_csv(data / "sample_submission.csv", index=False)
    return {"root": tmp_path, "data": data, "train": train, "sample": sample}


def make_run(comp, model, name, *, gender_noise, age_noise, seed, folds_file="folds/c-k3-seed42.csv",
             folds_sha="a" * 64, missing_folds=(), oof=None, runs_root=None):
    """A complete fake run directory under <root>/runs/MODEL/NAME (predictions = truth + noise)."""
    rng = np.random.default_rng(seed)
    train = comp["train"]
    path = (runs_root or comp["root"] / "runs") / model / name
    path.mkdir(parents=True)
    config = {"model": model, "name": name, "competition": "c", "data_dir": str(comp["data"]),
              "folds_file": folds_file, "folds_sha256": folds_sha, "n_folds": K}
    (path / "config.json").write_text(json.dumps(config))
    if oof is None:
        prob = np.clip(train["gender"] * 0.6 + 0.2 + rng.normal(0, gender_noise, N_TRAIN), 0, 1)
        oof = train.assign(gender_prob=prob, age_pred=train["age"] + rng.normal(0, age_noise, N_TRAIN))
    oof[["id", "fold", "gender", "age", "gender_prob", "age_pred"]].to_csv(path / "oof.csv", index=False)
    test_ids = comp["sample"]["id"].iloc[::-1]  # test.csv order need not be the sample's
    for k in range(K):
        if k in missing_folds:
            continue
        pd.DataFrame({"id": test_ids, "gender_prob": rng.uniform(0, 1, N_TEST),
                      "age_pred": rng.uniform(-5, 120, N_TEST)}).to_csv(path / f"test_fold{k}.csv", index=False)
    return path


@pytest.fixture
def two_runs(competition):
    a = make_run(competition, "resnet18", "base", gender_noise=0.25, age_noise=6, seed=1)
    b = make_run(competition, "effnet", "base", gender_noise=0.3, age_noise=8, seed=2)
    return a, b


# ---------------------------------------------------------------------------------------------------
# The validator

@pytest.fixture
def sample():
    return pd.DataFrame({"id": ["3", "1", "2"], "gender": ["1"] * 3, "age": ["30"] * 3})


def good():
    return pd.DataFrame({"id": ["3", "1", "2"], "gender": [0, 1, 1], "age": [21.5, 40.0, 3.0]})


@pytest.mark.parametrize("case, change, expected", [
    ("missing id", lambda s: s.iloc[:2], "missing"),
    ("extra id", lambda s: pd.concat([s, pd.DataFrame({"id": ["9"], "gender": [1], "age": [5.0]})]),
     "not in sample_submission"),
    ("duplicated id", lambda s: s.assign(id=["3", "1", "1"]), "duplicated"),
    ("duplicated extra row", lambda s: pd.concat([s, s.iloc[:1]]), "duplicated"),
    ("NaN age", lambda s: s.assign(age=[1.0, np.nan, 2.0]), "age"),
    ("infinite age", lambda s: s.assign(age=[1.0, np.inf, 2.0]), "age"),
    ("wrong column name", lambda s: s.rename(columns={"age": "Age"}), "columns"),
    ("wrong column order", lambda s: s[["id", "age", "gender"]], "columns"),
    ("gender 2", lambda s: s.assign(gender=[0, 2, 1]), "gender"),
    ("gender probability", lambda s: s.assign(gender=[0.2, 0.9, 0.6]), "gender"),
    ("gender bool", lambda s: s.assign(gender=[False, True, True]), "gender"),
    ("gender missing", lambda s: s.assign(gender=[0, None, 1]), "gender"),
    ("wrong row order", lambda s: s.iloc[[1, 0, 2]], "order"),
    ("negative age", lambda s: s.assign(age=[21.5, -40.0, 3.0]), "outside -20..200 years"),
    ("absurd age", lambda s: s.assign(age=[21.5, 1e9, 3.0]), "outside -20..200 years"),
])
def test_validator_catches_each_malformed_case(sample, case, change, expected):
    submission = change(good()).reset_index(drop=True)
    problems = submission_problems(submission, sample)
    assert problems and any(expected in p for p in problems), (case, problems)
    with pytest.raises(SubmissionError):
        validate_submission(submission, sample)


def test_validator_accepts_good_submission_and_int_ids(sample):
    validate_submission(good(), sample)
    validate_submission(good().assign(id=[3, 1, 2]), sample)  # ids compare as text
    validate_submission(good().assign(gender=["0", "1.0", "1"]), sample)   # Kaggle reads 1.0 as the class 1


@pytest.mark.parametrize("text, expected", [
    ("id,gender,age\n3,0,1\n1,0.5,2\n2,1,3\n", "gender"),   # a probability is not a class
    ("", "is empty"),                                       # a 0-byte file
    ("id,gender,age\n3,0,1\n1,1,\n2,1,3\n", "age"),         # empty age
    ("id,gender,age\n3,0,1\n1,1,2\n", "missing"),
])
def test_file_validator_reads_text(tmp_path, sample, text, expected):
    sample_path = tmp_path / "sample.csv"
    sample.to_csv(sample_path, index=False)
    path = tmp_path / "sub.csv"
    path.write_text(text)
    with pytest.raises(SubmissionError, match=expected):
        validate_submission_file(path, sample_path)
    path.write_text("id,gender,age\n3,0,1\n1,1,2.5\n2,1,3\n")
    validate_submission_file(path, sample_path)


# ---------------------------------------------------------------------------------------------------
# Loading runs

def test_load_run_by_path_and_by_model_name(competition, two_runs):
    by_path = load_run(two_runs[0])
    by_name = load_run("resnet18/base", runs_root=competition["root"] / "runs")
    assert by_path.label == by_name.label == "resnet18/base"
    assert len(by_path.oof) == N_TRAIN and len(by_path.test) == N_TEST
    folds = [pd.read_csv(two_runs[0] / f"test_fold{k}.csv") for k in range(K)]
    assert np.allclose(by_path.test["age_pred"], np.mean([f["age_pred"] for f in folds], axis=0))


def test_incomplete_run_is_refused_naming_missing_folds(competition):
    path = make_run(competition, "resnet18", "half", gender_noise=0.2, age_noise=5, seed=1, missing_folds=(1, 2))
    with pytest.raises(RunError, match=r"test_fold1\.csv, test_fold2\.csv.*facekit cv"):
        load_run(path)
    with pytest.raises(RunError, match="not found"):
        load_run("nope/nothing", runs_root=competition["root"] / "runs")


def test_runs_on_different_folds_are_refused(competition):
    a = make_run(competition, "resnet18", "base", gender_noise=0.2, age_noise=5, seed=1)
    b = make_run(competition, "effnet", "base", gender_noise=0.2, age_noise=5, seed=2,
                 folds_file="folds/c-k3-seed7.csv", folds_sha="b" * 64)
    with pytest.raises(RunError, match=r"folds/c-k3-seed42\.csv.*folds/c-k3-seed7\.csv"):
        blend([load_run(a), load_run(b)])
    out = competition["root"] / "sub.csv"
    assert main([str(a), str(b), "--out", str(out)]) == 2
    assert not out.exists()


def test_runs_on_same_folds_but_other_rows_are_refused(competition):
    a = make_run(competition, "resnet18", "base", gender_noise=0.2, age_noise=5, seed=1)
    fewer = competition["train"].iloc[5:].assign(gender_prob=0.5, age_pred=30.0)
    b = make_run(competition, "effnet", "dropped", gender_noise=0, age_noise=0, seed=2, oof=fewer)
    with pytest.raises(RunError, match="not the same out-of-fold rows"):
        blend([load_run(a), load_run(b)])


# ---------------------------------------------------------------------------------------------------
# Blending math

def test_fast_macro_f1_matches_sklearn():
    rng = np.random.default_rng(3)
    gender = rng.integers(0, 2, 200)
    probs = rng.uniform(0, 1, (200, 4))
    probs[:5, 0] = 0.5  # exact ties with a threshold
    f1 = blending.macro_f1_by_threshold(gender, probs, blending.THRESHOLDS)
    for g in range(4):
        for t in (0, 30, 48, 96):
            expected = score(gender, probs[:, g] >= blending.THRESHOLDS[t], [0], [0]).gender_f1
            assert f1[g, t] == pytest.approx(expected)


def test_simplex_grid_has_vertices_and_equal_weights():
    for members in (1, 2, 3, 5, 8):
        grid = blending.simplex_grid(members)
        assert np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
        assert np.allclose(grid[0], 1 / members)
        for vertex in np.eye(members):
            assert np.isclose(grid, vertex).all(axis=1).any()
    assert 0.5 in blending.THRESHOLDS


def test_auto_weights_prefer_the_better_member(competition):
    good_run = make_run(competition, "m", "good", gender_noise=0.05, age_noise=2, seed=1)
    noise = competition["train"].assign(gender_prob=np.random.default_rng(5).uniform(0, 1, N_TRAIN),
                                        age_pred=np.random.default_rng(6).uniform(1, 90, N_TRAIN))
    bad_run = make_run(competition, "m", "noise", gender_noise=0, age_noise=0, seed=2, oof=noise)
    result = blend([load_run(good_run), load_run(bad_run)])
    assert result.params.gender_weights[0] > 0.5 and result.params.age_weights[0] > 0.8
    assert result.cv.score >= max(s.score for s in result.member_scores) - 0.02


def test_cross_fitted_weights_never_see_the_rows_they_score(competition, two_runs, monkeypatch):
    """Spy on fit_blend: the rows each fit sees (true ages made unique per row identify them)."""
    for path in two_runs:
        oof = pd.read_csv(path / "oof.csv", dtype={"id": str})
        oof["age"] = np.arange(N_TRAIN) + 1.0
        oof.to_csv(path / "oof.csv", index=False)
    fitted_rows = []
    real_fit = blending.fit_blend

    def spy(data, **kwargs):
        params = real_fit(data, **kwargs)
        fitted_rows.append((params, set(data.age)))
        return params

    monkeypatch.setattr(blending, "fit_blend", spy)
    result = blend([load_run(p) for p in two_runs])
    rows_of_fit = {id(params): rows for params, rows in fitted_rows}
    all_rows = set(result.oof["age"])
    assert len(fitted_rows) == K + 1  # one fit per held-out fold, one on everything for the test set
    assert rows_of_fit[id(result.params)] == all_rows
    gender_prob = np.column_stack([load_run(p).oof["gender_prob"] for p in two_runs])
    age_pred = np.column_stack([load_run(p).oof["age_pred"] for p in two_runs])
    for fold, params in result.cross_fit.fold_params.items():
        scored = result.oof["fold"].to_numpy() == fold
        scored_rows = set(result.oof["age"][scored])
        assert rows_of_fit[id(params)].isdisjoint(scored_rows)
        assert rows_of_fit[id(params)] == all_rows - scored_rows
        # and those held-out rows really are predicted by that fold's params
        prob, gender, age = blending.apply_blend(params, gender_prob[scored], age_pred[scored])
        assert np.allclose(result.oof["gender_prob"][scored], prob)
        assert np.allclose(result.oof["age_pred"][scored], age)


def test_cross_fitting_is_visible_where_in_sample_fitting_would_leak(competition):
    """Member A is right on fold 0 and wrong elsewhere, member B the mirror image. Fitting on a fold's
    own rows would score perfectly; fitting on the other folds picks the member that fails there."""
    train = competition["train"].assign(fold=np.arange(N_TRAIN) % 2)
    right_prob = np.where(train["gender"] == 1, 0.9, 0.1)
    on_fold0 = (train["fold"] == 0).to_numpy()
    a = train.assign(gender_prob=np.where(on_fold0, right_prob, 1 - right_prob),
                     age_pred=np.where(on_fold0, train["age"], 50.0))
    b = train.assign(gender_prob=np.where(on_fold0, 1 - right_prob, right_prob),
                     age_pred=np.where(on_fold0, 50.0, train["age"]))
    runs = []
    for name, oof in (("a", a), ("b", b)):
        path = make_run(competition, "m", name, gender_noise=0, age_noise=0, seed=1, oof=oof)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "n_folds": 2}))
        runs.append(load_run(path))
    result = blend(runs)
    assert result.cv.gender_f1 < 0.05
    age = train["age"].to_numpy()
    assert result.cv.age_rmse == pytest.approx(np.sqrt(np.mean((age - 50.0) ** 2)), rel=0.05)
    assert cv_note(result).startswith("cross-fitted")


# ---------------------------------------------------------------------------------------------------
# Writing submissions

@pytest.mark.parametrize("weights", ["auto", "equal"])
def test_blend_writes_validated_csv_and_sidecar(competition, two_runs, weights, capsys, monkeypatch):
    monkeypatch.setenv("FACEKIT_ROOT", str(competition["root"]))   # no chdir: every command reads the root
    assert main(["resnet18/base", "effnet/base", "--weights", weights]) == 0
    printed = capsys.readouterr().out
    assert "resnet18/base" in printed and "effnet/base" in printed and "cross-fitted" in printed
    out = competition["root"] / "submissions" / f"resnet18-base+effnet-base{'-equal' if weights == 'equal' else ''}.csv"
    sample_path = competition["data"] / "sample_submission.csv"
    submission = validate_submission_file(out, sample_path)
    assert list(submission["id"]) == list(competition["sample"]["id"])
    ages = submission["age"].astype(float)
    train_ages = competition["train"]["age"]
    assert ages.min() >= train_ages.min() and ages.max() <= train_ages.max()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["sha256"] == sha256_file(out) == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sidecar["cross_fitted"] is True and isinstance(sidecar["cv_score"], float)
    assert [m["model"] for m in sidecar["members"]] == ["resnet18", "effnet"]
    assert sum(sidecar["weights"]["gender"].values()) == pytest.approx(1)
    assert sum(sidecar["weights"]["age"].values()) == pytest.approx(1)
    assert sidecar["folds_file"] == "folds/c-k3-seed42.csv"
    if weights == "equal":
        assert sidecar["threshold"] == 0.5 and sidecar["weights"]["age"]["effnet/base"] == 0.5
    estimate = sidecar["leaderboard_estimate"]
    assert estimate["public"][0] < estimate["score"] < estimate["public"][1]
    assert estimate["oof_score"] == pytest.approx(sidecar["cv_score"], abs=1e-5)
    assert f"leaderboard estimate {estimate['score']:.4f}" in printed


def test_the_blend_estimate_comes_from_each_folds_blended_test_predictions(competition, two_runs):
    runs = [load_run(path) for path in two_runs]
    result = blend(runs, "equal")
    # Fold k's blended ages: the mean of the members' fold-k ages, clipped to the training range, in the
    # sample's row order; the estimate removes their variance across the folds from the out-of-fold MSE.
    order = [pd.Index(run.test["id"]).get_indexer(competition["sample"]["id"]) for run in runs]
    low, high = competition["train"]["age"].min(), competition["train"]["age"].max()
    fold_ages = np.stack([np.clip(np.mean([run.fold_age_pred[k, at] for run, at in zip(runs, order)], axis=0),
                                  low, high) for k in range(K)])
    assert result.estimate.age_variance == pytest.approx(np.mean(np.var(fold_ages, axis=0)))
    expected_rmse = np.sqrt(max(result.cv.age_rmse ** 2 - result.estimate.age_variance, 0))
    assert result.estimate.age_rmse == pytest.approx(expected_rmse)
    assert result.estimate.oof_score == pytest.approx(result.cv.score)


def test_existing_submission_is_not_overwritten(competition, two_runs):
    out = competition["root"] / "sub.csv"
    runs = [load_run(p) for p in two_runs]
    result = blend(runs, "equal")
    write_submission(result, out)
    before = out.read_bytes()
    with pytest.raises(SubmissionError, match="--overwrite"):
        write_submission(blend(runs, "auto"), out)
    assert main([str(p) for p in two_runs] + ["--out", str(out)]) == 2
    assert out.read_bytes() == before
    assert main([str(p) for p in two_runs] + ["--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["weighting"] == "auto"


def test_out_must_be_a_csv_that_is_not_the_ledger(competition, two_runs, capsys):
    runs = [str(p) for p in two_runs]
    for out, message in (("x.json", "a submission is a .csv file"), ("ledger.csv", "the submission ledger's name")):
        target = competition["root"] / "submissions" / out
        assert main([*runs, "--out", str(target)]) == 2
        assert message in capsys.readouterr().err and not target.exists()


def test_out_naming_a_folder_is_refused_and_nothing_is_written(competition, two_runs, capsys):
    runs = [str(p) for p in two_runs]
    for folder in ("dir.csv", "dir2.json"):
        (competition["root"] / "submissions" / folder).mkdir(parents=True)
    for out in ("dir.csv", "dir2.csv"):      # the CSV's name, or its sidecar's, taken by a folder
        target = competition["root"] / "submissions" / out
        assert main([*runs, "--out", str(target), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {target}: ") and "is a folder; name a file" in err
    assert sorted(p.name for p in (competition["root"] / "submissions").iterdir()) == ["dir.csv", "dir2.json"]
    assert not list((competition["root"] / "submissions" / "dir.csv").iterdir())


def test_a_run_given_twice_is_refused(competition, two_runs, capsys):
    path = two_runs[0]
    spelled_twice = [str(path), str(path.parent / ".." / path.parent.name / path.name)]
    with pytest.raises(RunError, match="is given twice"):
        blend([load_run(p) for p in spelled_twice])
