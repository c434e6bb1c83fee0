"""The leaderboard estimate (kit/estimate.py) and best-epoch selection (kit/selection.py), on synthetic
predictions whose answer is known."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import f1_score

from kit.config import TrainConfig
from kit.cv import RunResult, summary
from kit.data import Competition
from kit.estimate import PUBLIC_ROWS, FoldedPredictions, age_variance, gender_gain, leaderboard_estimate
from kit.metric import Scores, score, score_probabilities
from kit.paths import Project
from kit.rundir import finish_run, load_run
from kit.selection import measure_selection


def scores_of(gender, prob, age, pred, threshold=0.5) -> Scores:
    return score_probabilities(gender, prob, age, pred, threshold)


def test_the_age_correction_is_the_identity_of_the_average():
    # K models' ages on the same rows: the mean over the models of their squared errors (what out-of-fold
    # rows measure, one model per row) minus the models' variance is exactly the average's squared error.
    rng = np.random.default_rng(0)
    k, n = 5, 3000
    age = rng.uniform(1, 90, n)
    shared = rng.normal(0, 5, n)                       # what every model gets wrong alike: averaging keeps it
    fold_age = age + shared + rng.normal(0, 3, (k, n))  # what each model gets wrong on its own
    single_mse = float(np.mean((fold_age - age) ** 2))
    gender = rng.integers(0, 2, n)
    prob = np.where(gender == 1, 0.9, 0.1)
    oof = FoldedPredictions(gender, age, prob, fold_age[0])
    base = Scores(0.0, 1.0, 0.0, float(np.sqrt(single_mse)), 0.0)
    estimate = leaderboard_estimate(oof=oof, scores=base, test_prob=np.tile(prob, (k, 1)), test_age=fold_age)
    averaged_rmse = np.sqrt(np.mean((fold_age.mean(axis=0) - age) ** 2))
    assert estimate.age_rmse == pytest.approx(averaged_rmse, rel=1e-9)
    # the population variance over K models of noise with variance 9: 9 (K - 1) / K
    assert estimate.age_variance == pytest.approx(age_variance(fold_age)) == pytest.approx(9.0 * (k - 1) / k, rel=0.05)
    assert estimate.gain_f1 == 0.0                       # identical gender models: nothing to gain
    assert estimate.score == pytest.approx(score(gender, gender, age, fold_age.mean(axis=0)).score)


def noisy_logit_models(rng, *, n, k, spread=5.0, noise=1.2, sharpness=0.8):
    """Rows with a latent logit m; the truth drawn from expit(sharpness * m); K models seeing m + their own
    noise. Returns (gender, model probabilities (k, n))."""
    m = rng.normal(0.2, spread, n)
    gender = (rng.random(n) < expit(sharpness * m)).astype(int)
    return gender, expit(m + rng.normal(0, noise, (k, n)))


@pytest.mark.parametrize("k", [3, 5])
def test_the_gender_gain_matches_what_averaging_really_adds(k):
    rng = np.random.default_rng(k)
    oof_gender, oof_prob = noisy_logit_models(rng, n=40_000, k=1)
    oof = FoldedPredictions(oof_gender, np.zeros(len(oof_gender)), oof_prob[0], np.zeros(len(oof_gender)))
    gains, estimated = [], []
    for _ in range(4):   # the true gain on one test set is itself noisy: compare means over a few
        gender, probs = noisy_logit_models(rng, n=6000, k=k)
        averaged = f1_score(gender, probs.mean(axis=0) >= 0.5, average="macro")
        singles = np.mean([f1_score(gender, p >= 0.5, average="macro") for p in probs])
        gains.append(averaged - singles)
        estimated.append(gender_gain(oof, probs))
    assert np.mean(gains) > 0.008                       # averaging helps here, clearly
    assert np.mean(estimated) == pytest.approx(np.mean(gains), abs=0.002)


def test_no_spread_means_no_gain_and_the_intervals_hold_the_estimate():
    rng = np.random.default_rng(1)
    n = 4000
    gender, probs = noisy_logit_models(rng, n=n, k=1)
    age = rng.uniform(1, 90, n)
    pred = age + rng.normal(0, 7, n)
    oof = FoldedPredictions(gender, age, probs[0], pred)
    base = scores_of(gender, probs[0], age, pred)
    same = leaderboard_estimate(oof=oof, scores=base, test_prob=np.tile(probs[0], (3, 1)),
                                test_age=np.tile(pred, (3, 1)))
    assert same.score == pytest.approx(base.score) and same.age_variance == pytest.approx(0, abs=1e-12)
    assert same.gain_f1 == pytest.approx(0, abs=1e-12)
    low, high = same.public
    assert low < same.score < high
    # The private split is larger than the public one: its noise is smaller.
    assert same.private[1] - same.private[0] < high - low
    # A fixed submission scored on PUBLIC_ROWS random rows: the interval's half-width is about twice that sd.
    draws = [scores_of(gender[r], probs[0][r], age[r], pred[r]).score
             for r in rng.integers(0, n, (300, PUBLIC_ROWS))]
    assert (high - low) / 2 == pytest.approx(1.96 * np.std(draws) * np.sqrt(1 + PUBLIC_ROWS / n), rel=0.2)
    biased = leaderboard_estimate(oof=oof, scores=base, test_prob=np.tile(probs[0], (3, 1)),
                                  test_age=np.tile(pred, (3, 1)), selection_bias=0.003)
    # the same draws (seeded): only the low ends move, by the bias
    assert biased.public == pytest.approx((low - 0.003, high))
    assert biased.private == pytest.approx((same.private[0] - 0.003, same.private[1]))


# ----------------------------------------------------------------------------- a run's selection

def history(fold: int, scores: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"fold": fold, "epoch": range(len(scores)), "train_loss": np.linspace(1, 0.5, len(scores)),
                         "train_images_per_s": 100.0, "score": scores})


def test_selection_is_best_minus_last_per_fold():
    selection = measure_selection([history(0, [0.70, 0.80, 0.78]), history(1, [0.70, 0.75, 0.79])])
    assert [(f.best_epoch, f.last_epoch) for f in selection.folds] == [(1, 2), (2, 2)]
    assert selection.bias == pytest.approx((0.02 + 0.0) / 2)
    assert selection.free_score(0.80) == pytest.approx(0.79)
    assert "fold(s) [0] kept an earlier epoch" in selection.describe(0.80)


def fake_finished_folds(run_dir, rng, *, n=400, n_test=300, k=2):
    """Two finished folds as train.py leaves them: fold 0's best epoch is not its last."""
    ids = [f"r{i}" for i in range(n)]
    gender = rng.integers(0, 2, n)
    age = rng.uniform(1, 90, n)
    train = pd.DataFrame({"id": ids, "gender": gender, "age": age})
    test_age = rng.uniform(1, 90, n_test)
    fold_histories = [[0.60, 0.72, 0.70], [0.60, 0.66, 0.71]]   # fold 0 kept epoch 1, fold 1 its last
    for fold in range(k):
        rows = train[np.arange(n) % k == fold]
        prob = np.clip(rows["gender"] * 0.6 + 0.2 + rng.normal(0, 0.2, len(rows)), 0, 1)
        fold_dir = run_dir / f"fold{fold}"
        fold_dir.mkdir(parents=True)
        rows.assign(fold=fold, gender_prob=prob, age_pred=rows["age"] + rng.normal(0, 8, len(rows)))[
            ["id", "fold", "gender", "age", "gender_prob", "age_pred"]].to_csv(fold_dir / "oof.csv", index=False)
        history(fold, fold_histories[fold]).to_csv(fold_dir / "history.csv", index=False)
        (fold_dir / "metrics.json").write_text(json.dumps({"fold": fold, "best_epoch": int(np.argmax(
            fold_histories[fold])), "scores": {}, "cut_at_epoch": None}))
        pd.DataFrame({"id": [f"t{i}" for i in range(n_test)], "gender_prob": rng.uniform(0, 1, n_test),
                      "age_pred": test_age + rng.normal(0, 4, n_test)}).to_csv(
            run_dir / f"test_fold{fold}.csv", index=False)
    return train


def test_a_run_whose_best_epoch_is_not_its_last_reports_the_selection_free_score(tmp_path):
    run_dir = tmp_path / "runs" / "scratch" / "x"
    train = fake_finished_folds(run_dir, np.random.default_rng(0))
    cfg = TrainConfig(model="scratch", name="x", folds=2)
    comp = Competition("c", tmp_path, train, pd.DataFrame({"id": []}))
    overall, selection, estimate = finish_run(run_dir, cfg, comp)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["selection"]["bias"] == pytest.approx(0.01)         # (0.72 - 0.70 + 0) / 2
    assert metrics["selection"]["selection_free_score"] == pytest.approx(overall.score - 0.01)
    assert metrics["selection"]["folds"]["0"] == {"best_epoch": 1, "best_score": 0.72, "last_epoch": 2,
                                                  "last_score": 0.70}
    assert metrics["leaderboard_estimate"]["score"] == pytest.approx(estimate.score, abs=1e-5)
    assert estimate.age_variance > 0 and estimate.score > overall.score   # two different test predictions
    # the interval's low end carries the selection bias
    assert estimate.selection_bias == pytest.approx(0.01)
    config = {"model": "scratch", "name": "x", "competition": "c", "data_dir": str(tmp_path), "folds_file": "f",
              "folds_sha256": "s", "n_folds": 2}
    (run_dir / "config.json").write_text(json.dumps(config))
    assert load_run(run_dir).selection.bias == pytest.approx(0.01)
    result = RunResult(run_dir, overall, {}, 1.0, True, selection, estimate)
    printed = summary(result, cfg, Project.at(tmp_path))
    assert f"out-of-fold: {overall} (each fold's best epoch)" in printed
    assert f"selection-free (last epochs) {overall.score - 0.01:.4f}" in printed
    assert f"leaderboard estimate {estimate.score:.4f}" in printed
