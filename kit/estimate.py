"""What the submitted file will score on the leaderboard, estimated without test labels.

    estimate = leaderboard_estimate(oof=FoldedPredictions(...), test=[fold 0's test predictions, ...])
    estimate.as_dict()  -> {"score": S, "public": [low, high], "private": [low, high], ...}

Every out-of-fold row is predicted by one model trained on (K-1)/K of the data; the submission averages the
K fold models' test predictions, which scores better (issue 23: out of fold 0.8309, the five models' average
0.8404 on the private rows). The spread of the K models' predictions on the test images says how much the
averaging removes, with no test label:

- age: for every test row, mean_k (y - f_k)^2 = (y - mean_k f_k)^2 + var_k f_k (population variance over
  the K models). The out-of-fold MSE estimates the left side (each row by one single model), so the
  averaged MSE is the out-of-fold MSE minus the test rows' mean variance across the fold models.
- gender: the averaged decision differs from a single model's only where they disagree, and there it is
  right with the probability that the row is of the averaged side. That probability comes from a logistic
  calibration of the single models' out-of-fold logits, de-attenuated for averaging: a single logit is
  m + e_k with fold noise e_k of variance s2 (the test rows' variance across the K models), so the fitted
  slope is shrunk by Var(m) / (Var(m) + s2) and the average's by Var(m) / (Var(m) + s2 / K). With those
  probabilities the expected confusion counts give each decision rule's expected macro-F1; the averaged
  rule's minus the single rules' mean is added to the out-of-fold F1 (calibration errors cancel in it).

The interval is the noise of a fixed submission scored on a random subset of the public (or private)
split's size, bootstrapped from the out-of-fold rows, widened by the out-of-fold score's own noise and, on
the low side, by the best-epoch selection bias (kit/selection.py) the out-of-fold score may carry.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from kit.metric import AGE_RMSE_CAP, Scores, harmonic_mean

# The competition's test set: 5,926 rows, about 40% scored on the public leaderboard, the rest private.
PUBLIC_ROWS, PRIVATE_ROWS = 2370, 3556
BOOTSTRAP_DRAWS = 400
Z95 = 1.959964
PROB_EPS = 1e-4   # probabilities are clipped to [eps, 1 - eps] before their logit


@dataclass(frozen=True)
class FoldedPredictions:
    """Out-of-fold rows: the truth and one fold model's prediction for each."""
    gender: np.ndarray        # (n,) 0/1
    age: np.ndarray           # (n,)
    gender_prob: np.ndarray   # (n,)
    age_pred: np.ndarray      # (n,)


@dataclass(frozen=True)
class Estimate:
    score: float              # what the averaged submission should score
    gender_f1: float
    age_rmse: float
    oof_score: float          # the out-of-fold score it starts from
    gain_f1: float            # what averaging the K models adds to the gender F1
    age_variance: float       # mean over test rows of the K models' age variance (removed from the MSE)
    selection_bias: float     # best-epoch selection, widening the low side of the intervals
    public: tuple[float, float]
    private: tuple[float, float]

    def as_dict(self) -> dict:
        return {"score": round(self.score, 5), "public": [round(v, 5) for v in self.public],
                "private": [round(v, 5) for v in self.private], "oof_score": round(self.oof_score, 5),
                "gender_f1": round(self.gender_f1, 5), "age_rmse": round(self.age_rmse, 4),
                "gender_f1_gain": round(self.gain_f1, 5), "age_variance": round(self.age_variance, 4),
                "selection_bias": round(self.selection_bias, 5)}

    def __str__(self) -> str:
        return (f"leaderboard estimate {self.score:.4f} (out of fold {self.oof_score:.4f}; averaging: F1 "
                f"{self.gain_f1:+.4f}, age variance {self.age_variance:.2f} off the MSE); 95% on the public "
                f"split {self.public[0]:.4f}-{self.public[1]:.4f}, private {self.private[0]:.4f}-{self.private[1]:.4f}")


# ----------------------------------------------------------------------------- macro-F1 from counts

def macro_f1_counts(tp, fp, fn, tn):
    """Macro-F1 of confusion counts (arrays broadcast): the mean of the male and the female F1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        male = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        female = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
    return (male + female) / 2


def expected_macro_f1(q: np.ndarray, decided_male: np.ndarray) -> float:
    """Macro-F1 from the expected confusion counts when row i is male with probability q[i]."""
    d = decided_male.astype(np.float64)
    return float(macro_f1_counts(tp=q @ d, fp=(1 - q) @ d, fn=q @ (1 - d), tn=(1 - q) @ (1 - d)))


# ----------------------------------------------------------------------------- the averaging gain

def age_variance(test_age: np.ndarray) -> float:
    """Mean over test rows of the K fold models' age variance (population variance, as in the identity)."""
    return float(np.mean(np.var(test_age, axis=0)))


def fit_calibration(gender: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of P(male) = expit(slope * logit(prob) + intercept), by maximum likelihood."""
    from sklearn.linear_model import LogisticRegression

    z = logit(np.clip(prob, PROB_EPS, 1 - PROB_EPS))[:, None]
    model = LogisticRegression(C=1e6, max_iter=1000).fit(z, gender)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def averaged_male_probability(oof: FoldedPredictions, test_prob: np.ndarray) -> np.ndarray:
    """P(male) for each test row given the K models' probabilities (K, rows): the single-model calibration
    applied to their mean logit with the slope de-attenuated from one model's noise to the K-average's."""
    k = test_prob.shape[0]
    slope, intercept = fit_calibration(oof.gender, oof.gender_prob)
    z_test = logit(np.clip(test_prob, PROB_EPS, 1 - PROB_EPS))
    noise = float(np.mean(np.var(z_test, axis=0, ddof=1)))          # s2: one model's fold noise
    z_oof = logit(np.clip(oof.gender_prob, PROB_EPS, 1 - PROB_EPS))
    signal = max(float(np.var(z_oof)) - noise, 1e-6)                  # Var(m)
    single, averaged = signal / (signal + noise), signal / (signal + noise / k)
    return expit(slope * averaged / single * z_test.mean(axis=0) + intercept)


def gender_gain(oof: FoldedPredictions, test_prob: np.ndarray, *, threshold: float = 0.5) -> float:
    """Expected macro-F1 of the averaged decision minus the mean over the K single models' decisions."""
    if len(np.unique(oof.gender)) < 2:   # one class only (a toy competition): nothing to calibrate on
        return 0.0
    q = averaged_male_probability(oof, test_prob)
    averaged = expected_macro_f1(q, test_prob.mean(axis=0) >= threshold)
    singles = [expected_macro_f1(q, row >= threshold) for row in test_prob]
    return averaged - float(np.mean(singles))


# ----------------------------------------------------------------------------- noise of a split

def bootstrap_scores(oof: FoldedPredictions, *, rows: int, threshold: float, draws: int, seed: int) -> np.ndarray:
    """The metric on `draws` resamples of `rows` out-of-fold rows: a fixed submission's score on random
    leaderboard splits of that size."""
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(oof.gender), size=(draws, rows))
    male, called = oof.gender[picked] == 1, oof.gender_prob[picked] >= threshold
    f1 = macro_f1_counts(tp=(male & called).sum(1), fp=(~male & called).sum(1), fn=(male & ~called).sum(1),
                         tn=(~male & ~called).sum(1))
    rmse = np.sqrt(np.mean((oof.age_pred[picked] - oof.age[picked]) ** 2, axis=1))
    age = 1 - np.minimum(rmse, AGE_RMSE_CAP) / AGE_RMSE_CAP
    return np.where(f1 + age > 0, 2 * f1 * age / np.maximum(f1 + age, 1e-12), 0.0)


def interval(oof: FoldedPredictions, center: float, *, rows: int, threshold: float, selection_bias: float,
             seed: int = 0) -> tuple[float, float]:
    """95% interval of the leaderboard score on `rows` rows: the split's noise plus that of the out-of-fold
    estimate itself (its variance scales as rows / n), the selection bias taken off the low end."""
    sd = float(np.std(bootstrap_scores(oof, rows=rows, threshold=threshold, draws=BOOTSTRAP_DRAWS, seed=seed)))
    half = Z95 * sd * np.sqrt(1 + rows / len(oof.gender))
    return center - half - max(selection_bias, 0.0), center + half


def leaderboard_estimate(*, oof: FoldedPredictions, scores: Scores, test_prob: np.ndarray, test_age: np.ndarray,
                         threshold: float = 0.5, selection_bias: float = 0.0) -> Estimate:
    """The estimate for the average of K fold models whose test predictions are the rows of test_prob and
    test_age (K, test rows). `scores`: the out-of-fold figures it starts from (for a blend, its cross-fitted
    ones); `oof` (the same rows' predictions) gives the calibration and the noise."""
    test_prob, test_age = np.atleast_2d(test_prob), np.atleast_2d(test_age)
    gain = gender_gain(oof, test_prob, threshold=threshold) if len(test_prob) > 1 else 0.0
    variance = age_variance(test_age)
    f1 = min(scores.gender_f1 + gain, 1.0)
    rmse = float(np.sqrt(max(scores.age_rmse ** 2 - variance, 0.0)))
    score = harmonic_mean(f1, 1 - min(rmse, AGE_RMSE_CAP) / AGE_RMSE_CAP)
    public, private = (interval(oof, score, rows=rows, threshold=threshold, selection_bias=selection_bias)
                       for rows in (PUBLIC_ROWS, PRIVATE_ROWS))
    return Estimate(score, f1, rmse, scores.score, gain, variance, selection_bias, public, private)


def folded(frame) -> FoldedPredictions:
    """A frame with gender, age, gender_prob and age_pred columns (oof.csv, a blend's cross-fitted rows)."""
    return FoldedPredictions(frame["gender"].to_numpy(int), frame["age"].to_numpy(np.float64),
                             frame["gender_prob"].to_numpy(np.float64), frame["age_pred"].to_numpy(np.float64))
