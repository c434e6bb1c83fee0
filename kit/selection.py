"""Best-epoch selection, measured: how much a fold's kept score owes to picking its best epoch.

    selection = measure_selection(histories)     # fold<k>/history.csv of every fold, as frames
    selection.bias, selection.free_score(oof_score)

Each fold keeps the epoch that scores highest on its own held-out rows (kit/train.py), so the held-out score
it reports is the maximum of a noisy sequence: optimistic. history.csv records every epoch's held-out score
(one view, no flips, for every epoch alike), so best minus last, per fold, measures what the selection
adds; the selection-free score is the out-of-fold score less its mean over the folds: what the run would
have reported had every fold kept its last epoch, which nothing was chosen by.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class FoldSelection:
    fold: int
    best_epoch: int
    best_score: float
    last_epoch: int
    last_score: float

    @property
    def bias(self) -> float:
        return self.best_score - self.last_score


@dataclass(frozen=True)
class Selection:
    folds: list[FoldSelection]

    @property
    def bias(self) -> float:
        """Mean over the folds of best-epoch minus last-epoch held-out score (0 when every best is the last)."""
        return sum(f.bias for f in self.folds) / len(self.folds) if self.folds else 0.0

    def free_score(self, oof_score: float) -> float:
        return oof_score - self.bias

    def as_dict(self, oof_score: float) -> dict:
        return {"bias": round(self.bias, 6), "selection_free_score": round(self.free_score(oof_score), 6),
                "folds": {str(f.fold): {"best_epoch": f.best_epoch, "best_score": f.best_score,
                                        "last_epoch": f.last_epoch, "last_score": f.last_score} for f in self.folds}}

    def describe(self, oof_score: float) -> str:
        moved = [f.fold for f in self.folds if f.best_epoch != f.last_epoch]
        where = f"fold(s) {moved} kept an earlier epoch" if moved else "every fold kept its last epoch"
        return (f"selection-free (last epochs) {self.free_score(oof_score):.4f}: best-epoch selection adds "
                f"{self.bias:+.4f} ({where})")


def fold_selection(fold: int, history: pd.DataFrame) -> FoldSelection:
    """The best and the last epoch of one fold's history (columns epoch, score). Ties go to the earliest
    best epoch, as train.py keeps the first epoch that reached a score."""
    scores = history["score"].to_numpy(float)
    best = int(scores.argmax())
    return FoldSelection(fold, int(history["epoch"].iat[best]), float(scores[best]),
                         int(history["epoch"].iat[-1]), float(scores[-1]))


def measure_selection(histories: list[pd.DataFrame]) -> Selection:
    """Selection over a run's folds, from each fold's history.csv (in fold order)."""
    return Selection([fold_selection(k, history) for k, history in enumerate(histories) if len(history)])
