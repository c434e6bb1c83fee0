"""A submission's public score: reading it, waiting for it, and the ledger listed with fresh scores.

    scored = wait_for_score(services, ref, slug)   # services: kit/kaggle/api.py's Services
    list_submissions()          # what `facekit submissions` prints; pending ones are asked about first
    list_submissions(final=True)    # and the two final selections, proposed from the leaderboard estimates
"""
from __future__ import annotations

from kit.errors import KaggleFault
from kit.kaggle.api import DEFAULT_POLLING, Services, competition
from kit.kaggle.estimates import compare, estimate_cells, outside, propose_final
from kit.kaggle.ledger import append_row, is_intent, latest_states, now_utc, read_rows
from kit.log import log
from kit.paths import Project


def get_submission(services: Services, ref: int, slug: str):
    """The submission's current state, or None while Kaggle does not show it yet (it may lag a moment).

    Called through kagglesdk rather than KaggleApi.get_submission, whose own retry loop waits
    minutes on a dead connection; the services' retry bounds apply instead.
    """
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

    request = ApiGetSubmissionRequest()
    request.ref = int(ref)

    def read():
        with services.client().build_kaggle_client() as client:
            return client.competitions.competition_api_client.get_submission(request)

    return services.call(f"reading submission {ref}", read, competition(slug), missing_ok=True)


def wait_for_score(services: Services, ref: int, slug: str):
    """Poll until the submission is scored or errored, or the polling's timeout passes; return its last state."""
    scored, _ = services.poll(lambda: get_submission(services, ref, slug),
                              lambda submission: status_of(submission) != "pending", default=DEFAULT_POLLING,
                              note=lambda _, wait: log(f"  submission {ref}: being scored; next check in {wait:.0f}s"))
    return scored


def status_of(submission) -> str:
    return "pending" if submission is None else submission.status.name.lower()


def score_line(public: str | None, cv: float | None, estimate: dict | None = None) -> str:
    """The public score beside the CV score and the leaderboard estimate (with its public interval)."""
    line = f"public score {public or '(not published)'}"
    try:
        value = float(public)
    except (TypeError, ValueError):
        value = None
    if cv is not None:
        line += f"   CV score {cv:.5f}" + (f"   (public - CV = {value - cv:+.5f})" if value is not None else "")
    if estimate is not None:
        low, high = estimate["public"]
        line += f"\nleaderboard estimate {estimate['score']:.5f}, public 95% {low:.4f}-{high:.4f}"
        if value is not None:
            line += (f"   (public - estimate = {value - estimate['score']:+.5f}"
                     + ("; OUTSIDE the interval)" if outside(value, estimate) else ", inside the interval)"))
    return line


def list_submissions(slug: str | None = None, *, root=None, refresh: bool = True,
                     services: Services | None = None, final: bool = False) -> list[dict]:
    """Print and return the latest state of every recorded submission (of competition `slug`, if given);
    ask Kaggle about pending ones. Below the table: public minus estimate over the ledger, and with `final`
    the two final selections proposed."""
    ledger_path = Project.at(root).ledger
    services = services or Services()

    def current() -> list[dict]:
        states = latest_states(read_rows(ledger_path))
        # Intents are bookkeeping; one still "submitting" is shown: its process was stopped mid-upload.
        return [row for row in states if (slug is None or row["competition"] == slug)
                and (not is_intent(row) or row["status"] == "submitting")]

    pending = [row for row in current() if row["status"] == "pending"]
    if refresh and pending:
        try:
            for row in pending:
                scored = get_submission(services, int(row["ref"]), row["competition"])
                if status_of(scored) != "pending":
                    append_row(ledger_path, {**row, "time": now_utc(), "status": status_of(scored),
                                             "public_score": scored.public_score or "",
                                             "error": scored.error_description or ""})
        except KaggleFault as fault:
            log(f"could not refresh the pending submissions: {fault}")
    rows = current()
    log(format_table(rows) if rows else f"no submissions recorded in {ledger_path}")
    if rows:
        log(compare(rows))
    if final:
        chosen, why = propose_final(rows)
        log("final selections (by the leaderboard estimates):\n  " + "\n  ".join(why))
    return rows


def format_table(rows: list[dict]) -> str:
    columns = [("time", "time"), ("ref", "ref"), ("file", "file"), ("status", "status"),
               ("public_score", "public"), ("cv_score", "cv"), ("estimate", "estimate"),
               ("interval", "public 95%"), ("message", "message")]
    rows = [dict(zip(("estimate", "interval"), estimate_cells(row)), **row) for row in rows]
    cells = [[label for _, label in columns]] + [[row[key] or "-" for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)
