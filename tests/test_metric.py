import numpy as np
import pytest
from sklearn.metrics import f1_score, mean_squared_error

from kit.metric import harmonic_mean, score, score_probabilities


def test_matches_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    g_true, g_pred = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    a_true, a_pred = rng.uniform(1, 90, 500), rng.uniform(1, 90, 500)
    result = score(g_true, g_pred, a_true, a_pred)
    f1 = f1_score(g_true, g_pred, average="macro")
    rmse = np.sqrt(mean_squared_error(a_true, a_pred))
    age_score = 1 - min(rmse, 30) / 30
    assert result.gender_f1 == pytest.approx(f1)
    assert result.age_rmse == pytest.approx(rmse)
    assert result.score == pytest.approx(2 * f1 * age_score / (f1 + age_score))


def test_hand_computed_case():
    # gender: true [1,1,0,0], pred [1,0,0,0] -> class 1: P=1 R=.5 F1=2/3; class 0: P=2/3 R=1 F1=.8
    # age: errors 3,4,0,0 -> RMSE = sqrt(25/4) = 2.5 -> age score 1 - 2.5/30 = 11/12
    result = score([1, 1, 0, 0], [1, 0, 0, 0], [20, 30, 40, 50], [23, 34, 40, 50])
    f1 = (2 / 3 + 0.8) / 2
    assert result.gender_f1 == pytest.approx(f1)
    assert result.age_rmse == pytest.approx(2.5)
    assert result.age_mae == pytest.approx(1.75)
    assert result.score == pytest.approx(2 * f1 * (11 / 12) / (f1 + 11 / 12))


def test_rmse_is_capped_at_30():
    result = score([0, 1], [0, 1], [0, 0], [100, 100])
    assert result.age_score == 0.0 and result.score == 0.0


def test_probabilities_use_threshold():
    assert score_probabilities([0, 1], [0.4, 0.6], [1, 1], [1, 1]).gender_f1 == 1.0
    assert score_probabilities([0, 1], [0.4, 0.6], [1, 1], [1, 1], threshold=0.7).gender_f1 < 1.0


def test_harmonic_mean_of_zeros():
    assert harmonic_mean(0.0, 0.0) == 0.0
