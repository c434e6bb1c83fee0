"""The leaderboard estimate (kit/estimate.py) against the public scores, and the two final selections.

    estimate_for(row)              # a ledger row's estimate, from the NAME.json the file was made with
    compare(rows)                  # public minus estimate over the rows that have both; those outside
    propose_final(rows)            # the two final selections, chosen by the estimates alone

The estimate is read from the submission's NAME.json, and only while its sha256 is the submitted file's:
the ledger keeps what Kaggle said, the sidecar what the kit expected of that very file.
"""
from __future__ import annotations

import json
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


def compare(rows: list[dict]) -> str:
    """Public minus estimate over the rows that have both (the ledger's latest states): its mean and spread, and
    the submissions whose public score lies outside the estimate's public interval."""
    pairs = [(row, public, est) for row in rows
             if (public := public_of(row)) is not None and (est := estimate_for(row)) is not None]
    if not pairs:
        return "public minus estimate: no scored submission has a leaderboard estimate yet"
    differences = [public - est["score"] for _, public, est in pairs]
    spread = float(np.std(differences, ddof=1)) if len(differences) > 1 else 0.0   # the sd; 0 with one submission
    line = (f"public minus estimate over {len(pairs)} submission(s): mean {float(np.mean(differences)):+.4f}, "
            f"spread (sd) {spread:.4f}")
    beyond = [row["ref"] for row, public, est in pairs if outside(public, est)]
    return line + (f"; OUTSIDE its public interval: {', '.join(beyond)}" if beyond else "")


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
