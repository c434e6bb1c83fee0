"""The leaderboard estimate (kit/estimate.py) against the public scores, and the two final selections.

    estimate_for(row)              # a ledger row's estimate, from the NAME.json the file was made with
    compare(rows)                  # public minus estimate over the rows that have both; those outside
    propose_final(rows)            # the two final selections, chosen by the estimates alone

The estimate is read from the submission's NAME.json, and only while its sha256 is the submitted file's:
the ledger keeps what Kaggle said, the sidecar what the kit expected of that very file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def estimate_for(row: dict) -> dict | None:
    """{"score", "public", "private", ...} for a ledger row, or None (no sidecar, another file, no estimate)."""
    sidecar = Path(row["file"]).with_suffix(".json")
    try:
        content = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if content.get("sha256") != row["sha256"]:
        return None
    return content.get("leaderboard_estimate")


def public_of(row: dict) -> float | None:
    try:
        return float(row["public_score"]) if row["status"] == "complete" else None
    except (TypeError, ValueError):
        return None


def outside(public: float, estimate: dict) -> bool:
    low, high = estimate["public"]
    return not low <= public <= high


@dataclass(frozen=True)
class Comparison:
    refs: list[str]           # the submissions with a public score and an estimate
    differences: list[float]  # public minus estimate, in the same order
    outside: list[str]        # refs whose public score lies outside the estimate's public interval

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences))

    @property
    def spread(self) -> float:
        """Standard deviation of public minus estimate (0 with one submission)."""
        return float(np.std(self.differences, ddof=1)) if len(self.differences) > 1 else 0.0

    def describe(self) -> str:
        if not self.refs:
            return "public minus estimate: no scored submission has a leaderboard estimate yet"
        line = (f"public minus estimate over {len(self.refs)} submission(s): mean {self.mean:+.4f}, "
                f"spread (sd) {self.spread:.4f}")
        if self.outside:
            line += f"; OUTSIDE its public interval: {', '.join(self.outside)}"
        return line


def compare(rows: list[dict]) -> Comparison:
    """Public minus estimate over the rows that have both (the ledger's latest states)."""
    pairs = [(row, public_of(row), estimate_for(row)) for row in rows]
    pairs = [(row, public, est) for row, public, est in pairs if public is not None and est is not None]
    return Comparison([row["ref"] for row, _, _ in pairs], [public - est["score"] for _, public, est in pairs],
                      [row["ref"] for row, public, est in pairs if outside(public, est)])


def estimate_cells(row: dict) -> tuple[str, str]:
    """The ledger table's estimate and public-interval cells ('-' without an estimate), the latter flagged when
    the public score fell outside it."""
    estimate = estimate_for(row)
    if estimate is None:
        return "-", "-"
    low, high = estimate["public"]
    public = public_of(row)
    flag = " OUTSIDE" if public is not None and outside(public, estimate) else ""
    return f"{estimate['score']:.4f}", f"{low:.4f}-{high:.4f}{flag}"


def propose_final(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The two final selections and why: the highest estimate (the best expected private score), then, of
    the others, the highest low end of the private interval (the safest second bet). Public scores are not
    consulted: on about 2,370 rows they swing by several thousandths, so the best public score is partly
    the luckiest split, and choosing by it over-fits the public rows the private score does not include.
    Only submissions Kaggle scored without error are candidates (an errored file cannot be selected)."""
    candidates = [(row, est) for row in rows if row["status"] == "complete"
                  and (est := estimate_for(row)) is not None]
    if not candidates:
        return [], ["no scored submission has a leaderboard estimate (its NAME.json from `ensemble` or `best`)"]
    ranked = sorted(candidates, key=lambda pair: -pair[1]["score"])
    first, first_est = ranked[0]
    why = [f"1. {first['ref']} {first['file']}: the highest estimate, {first_est['score']:.4f} (private 95% "
           f"{first_est['private'][0]:.4f}-{first_est['private'][1]:.4f})"]
    if len(ranked) == 1:
        return [first], why + ["only one scored submission has an estimate: nothing to choose the second from"]
    second, second_est = max(ranked[1:], key=lambda pair: pair[1]["private"][0])
    why.append(f"2. {second['ref']} {second['file']}: of the others, the highest low end of the private "
               f"interval, {second_est['private'][0]:.4f} (estimate {second_est['score']:.4f})")
    half = (first_est["private"][1] - first_est["private"][0]) / 2
    gap = first_est["score"] - second_est["score"]
    why.append(f"their estimates differ by {gap:.4f}, " + (
        "within the private split's noise: either may score higher there" if gap < half
        else "more than the private split's noise"))
    why.append("public scores are not used: they measure about 2,370 rows and choosing by them over-fits "
               "those rows, which the private score leaves out")
    return [first, second], why
