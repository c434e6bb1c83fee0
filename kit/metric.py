"""The competition metric.

gender: macro-F1 of the 0/1 decision (1 male, 0 female).
age:    age_score = 1 - min(RMSE, 30) / 30.
score:  the harmonic mean of the two.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import f1_score

AGE_RMSE_CAP = 30.0


@dataclass(frozen=True)
class Scores:
    score: float
    gender_f1: float
    age_score: float
    age_rmse: float
    age_mae: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"score {self.score:.4f}  gender F1 {self.gender_f1:.4f}  "
                f"age RMSE {self.age_rmse:.3f}  MAE {self.age_mae:.3f}")


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


def age_score(age_true, age_pred) -> float:
    return 1.0 - min(rmse(age_true, age_pred), AGE_RMSE_CAP) / AGE_RMSE_CAP


def rmse(age_true, age_pred) -> float:
    diff = np.asarray(age_pred, dtype=np.float64) - np.asarray(age_true, dtype=np.float64)
    return float(np.sqrt(np.mean(diff ** 2)))


def score(gender_true, gender_pred, age_true, age_pred) -> Scores:
    """Score hard 0/1 gender decisions and age predictions the way the leaderboard does."""
    gender_true = np.asarray(gender_true).astype(int)
    gender_pred = np.asarray(gender_pred).astype(int)
    if len(gender_true) != len(gender_pred) or len(age_true) != len(age_pred):
        raise ValueError("score: true and predicted arrays differ in length")
    f1 = float(f1_score(gender_true, gender_pred, average="macro", labels=[0, 1], zero_division=0))
    age_true = np.asarray(age_true, dtype=np.float64)
    age_pred = np.asarray(age_pred, dtype=np.float64)
    a_score = age_score(age_true, age_pred)
    return Scores(score=harmonic_mean(f1, a_score), gender_f1=f1, age_score=a_score,
                  age_rmse=rmse(age_true, age_pred),
                  age_mae=float(np.mean(np.abs(age_pred - age_true))))


def score_probabilities(gender_true, gender_prob, age_true, age_pred, threshold: float = 0.5) -> Scores:
    """Score predicted male probabilities, deciding male where the probability reaches `threshold`."""
    return score(gender_true, (np.asarray(gender_prob) >= threshold).astype(int), age_true, age_pred)
