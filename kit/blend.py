"""The blending math: weights on the simplex, a gender threshold, and cross-fitting over the folds.

Gender and age are fitted separately, and that maximises the competition metric: the score is the
harmonic mean of gender macro-F1 and age_score, which increases in each; the gender part depends
only on the gender weights and threshold, the age part only on the age weights.

Weights are non-negative and sum to 1. They are searched on a simplex grid that contains every
vertex (all weight on one member) and equal weights, so a fit can always fall back to the best
single member; the threshold grid contains 0.5. Age weights are then refined by constrained least
squares where that lowers the RMSE on the rows being fitted.

Honesty: `cross_fit` fits on the rows of K-1 folds and predicts the held-out fold, so every
out-of-fold row of the blend is predicted by parameters that never saw it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import comb

import numpy as np
from scipy.optimize import minimize

# Candidate gender thresholds, 0.02..0.98 in steps of 0.01 (0.5 included).
THRESHOLDS = np.round(np.arange(0.02, 0.985, 0.01), 2)
# Grid resolutions tried from finest to coarsest: the weights are multiples of 1/denominator.
GRID_DENOMINATORS = (20, 10, 5, 4, 3, 2, 1)
MAX_GRID_POINTS = 2000
# Blended predictions are evaluated this many values at a time (rows x grid points) to bound memory.
CHUNK_VALUES = 2_000_000
TIE = 1e-12


@dataclass(frozen=True)
class BlendParams:
    """Everything fitted for one blend: how to turn members' predictions into a submission."""
    gender_weights: np.ndarray     # (members,) non-negative, sum 1
    age_weights: np.ndarray        # (members,) non-negative, sum 1
    threshold: float               # predict male where the blended probability >= threshold
    age_min: float                 # blended ages are clipped to the training range
    age_max: float

    def as_dict(self, labels: list[str]) -> dict:
        return {"gender_weights": dict(zip(labels, map(float, self.gender_weights))),
                "age_weights": dict(zip(labels, map(float, self.age_weights))),
                "threshold": float(self.threshold),
                "age_range": [float(self.age_min), float(self.age_max)]}


@dataclass
class MemberPredictions:
    """Every member's out-of-fold predictions, aligned row by row, with the true labels."""
    gender: np.ndarray        # (n,) true 0/1
    age: np.ndarray           # (n,) true age
    fold: np.ndarray          # (n,) fold each row was held out in
    gender_prob: np.ndarray   # (n, members) predicted probability of male
    age_pred: np.ndarray      # (n, members) predicted age

    @property
    def n_members(self) -> int:
        return self.gender_prob.shape[1]

    def subset(self, rows: np.ndarray) -> MemberPredictions:
        return MemberPredictions(self.gender[rows], self.age[rows], self.fold[rows],
                                 self.gender_prob[rows], self.age_pred[rows])


@dataclass
class CrossFit:
    """The honest out-of-fold blend: fold f's rows predicted by params fitted without fold f."""
    fold_params: dict[int, BlendParams]
    gender_prob: np.ndarray
    gender_pred: np.ndarray
    age_pred: np.ndarray


def simplex_grid(n_members: int, max_points: int = MAX_GRID_POINTS) -> np.ndarray:
    """(points, n_members) weight vectors: equal weights first, then a regular grid with the vertices.

    The finest resolution that keeps the grid within `max_points` is used (1/20 for up to 4 members).
    """
    equal = np.full((1, n_members), 1.0 / n_members)
    denominator = next((d for d in GRID_DENOMINATORS if comb(d + n_members - 1, n_members - 1) <= max_points), 1)
    points = np.array(list(_compositions(denominator, n_members)), dtype=np.float64) / denominator
    return np.concatenate([equal, points[~np.all(np.isclose(points, equal), axis=1)]])


def _compositions(total: int, parts: int):
    """Every tuple of `parts` non-negative integers summing to `total`."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def macro_f1_by_threshold(gender: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Macro-F1 of (probs[:, g] >= thresholds[t]) for every column g and threshold t: (columns, thresholds).

    Counting instead of re-scoring: each probability reaches the first k thresholds, so a histogram
    of k per column gives, by a reversed cumulative sum, how many rows are called male at each one.
    """
    n_rows, n_columns = probs.shape
    n_thresholds = len(thresholds)
    reached = np.searchsorted(thresholds, probs, side="right")       # p >= thresholds[j] for j < reached
    offsets = np.arange(n_columns) * (n_thresholds + 1)

    def called_male(rows):  # (columns, thresholds): rows among `rows` predicted male at each threshold
        hist = np.bincount((reached[rows] + offsets).ravel(), minlength=n_columns * (n_thresholds + 1))
        at_least = hist.reshape(n_columns, n_thresholds + 1)[:, ::-1].cumsum(axis=1)[:, ::-1]
        return at_least[:, 1:]

    male = gender == 1
    tp = called_male(male)
    fp = called_male(~male)
    fn = male.sum() - tp
    tn = (~male).sum() - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_male = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_female = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
    return (f1_male + f1_female) / 2


def fit_gender(gender: np.ndarray, gender_prob: np.ndarray, grid: np.ndarray,
               thresholds: np.ndarray = THRESHOLDS) -> tuple[np.ndarray, float]:
    """The (weights, threshold) of the grid with the highest macro-F1.

    Ties go to the threshold nearest 0.5, then to the earlier grid point (equal weights come first).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    chunk = max(1, CHUNK_VALUES // max(1, len(gender)))
    best = None  # (sort key, weights, threshold)
    for start in range(0, len(grid), chunk):
        f1 = macro_f1_by_threshold(gender, gender_prob @ grid[start:start + chunk].T, thresholds)
        for g, t in np.argwhere(f1 >= f1.max() - TIE):
            key = (-round(float(f1[g, t]), 12), abs(thresholds[t] - 0.5), start + g)
            if best is None or key < best[0]:
                best = (key, grid[start + g], float(thresholds[t]))
    return best[1], best[2]


def fit_age_weights(age: np.ndarray, age_pred: np.ndarray, grid: np.ndarray,
                    age_min: float, age_max: float) -> np.ndarray:
    """Weights with the lowest RMSE of the clipped blend: the best grid point, or the least-squares
    optimum on the simplex where that is better still."""
    chunk = max(1, CHUNK_VALUES // max(1, len(age)))
    mse = np.concatenate([
        np.mean((np.clip(age_pred @ grid[s:s + chunk].T, age_min, age_max) - age[:, None]) ** 2, axis=0)
        for s in range(0, len(grid), chunk)])
    weights = grid[int(np.argmin(mse))]
    if age_pred.shape[1] > 1:
        refined = _least_squares_on_simplex(age, age_pred, start=weights)
        refined_mse = np.mean((np.clip(age_pred @ refined, age_min, age_max) - age) ** 2)
        if refined_mse < mse.min() - TIE:
            weights = refined
    return weights


def _least_squares_on_simplex(target: np.ndarray, columns: np.ndarray, start: np.ndarray) -> np.ndarray:
    """argmin_w mean((columns @ w - target)^2) with w >= 0, sum(w) = 1 (a convex problem)."""
    n = len(target)

    def loss(w):
        residual = columns @ w - target
        return residual @ residual / n, 2 * (columns.T @ residual) / n

    result = minimize(loss, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * len(start),
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}])
    weights = np.clip(result.x, 0.0, None)
    return weights / weights.sum() if weights.sum() > 0 else start


def fit_blend(data: MemberPredictions, *, weighting: str = "auto", tune_threshold: bool = True) -> BlendParams:
    """Fit weights ("auto") or take equal ones ("equal"), and the threshold if `tune_threshold`,
    on every row of `data`. The age clip range is the range of the true ages in `data`."""
    if weighting not in ("auto", "equal"):
        raise ValueError(f"weighting must be 'auto' or 'equal', not {weighting!r}")
    age_min, age_max = float(data.age.min()), float(data.age.max())
    equal = np.full((1, data.n_members), 1.0 / data.n_members)
    grid = simplex_grid(data.n_members) if weighting == "auto" else equal
    thresholds = THRESHOLDS if tune_threshold else np.array([0.5])
    gender_weights, threshold = fit_gender(data.gender, data.gender_prob, grid, thresholds)
    age_weights = (fit_age_weights(data.age, data.age_pred, grid, age_min, age_max)
                   if weighting == "auto" else equal[0])
    return BlendParams(gender_weights, age_weights, threshold, age_min, age_max)


def apply_blend(params: BlendParams, gender_prob: np.ndarray, age_pred: np.ndarray):
    """(blended male probability, 0/1 gender, clipped age) for members' predictions (rows, members)."""
    prob = gender_prob @ params.gender_weights
    age = np.clip(age_pred @ params.age_weights, params.age_min, params.age_max)
    return prob, (prob >= params.threshold).astype(int), age


def cross_fit(data: MemberPredictions, fit: Callable[[MemberPredictions], BlendParams]) -> CrossFit:
    """Predict each fold's rows with parameters fitted on the other folds' rows only."""
    n = len(data.gender)
    gender_prob, gender_pred, age_pred = np.empty(n), np.empty(n, dtype=int), np.empty(n)
    fold_params = {}
    for fold in np.unique(data.fold):
        held_out = data.fold == fold
        params = fit(data.subset(~held_out))
        gender_prob[held_out], gender_pred[held_out], age_pred[held_out] = apply_blend(
            params, data.gender_prob[held_out], data.age_pred[held_out])
        fold_params[int(fold)] = params
    return CrossFit(fold_params, gender_prob, gender_pred, age_pred)
