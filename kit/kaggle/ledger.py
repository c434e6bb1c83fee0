"""submissions/ledger.csv: every submission Kaggle confirmed, append-only.

A row is only ever added, never changed: a submission is recorded as `pending` the moment Kaggle
confirms it (so a crash or Ctrl-C while waiting loses nothing), and when its score arrives a new
row with the same ref says `complete` or `error`. The latest row per (competition, ref) is the
submission's state. Appending reads the existing bytes, adds one line and renames a complete new
file into place (kit.files.atomic_path) under a lock, so concurrent submits cannot drop a row.

Before an upload, an intent row is written (ref `intent-<id>`, status `submitting`); once Kaggle
confirms, the intent is marked `confirmed` beside the real ref's `pending` row. A process killed
between the upload and that row leaves the intent `submitting`: the next submit resolves it against
Kaggle's own list of submissions (kit/kaggle/submit.py), so a confirmed upload is recorded, not repeated.
"""
from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kit.errors import LedgerError
from kit.files import atomic_path, exclusive_lock

COLUMNS = ["time", "file", "sha256", "ref", "message", "competition", "cv_score", "status",
           "public_score", "error"]
HEADER = ",".join(COLUMNS) + "\n"
INTENT_PREFIX = "intent-"


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_header(path: Path, existing: bytes) -> None:
    first_line = existing.split(b"\n", 1)[0].decode(errors="replace").strip()
    if first_line != HEADER.strip():
        raise LedgerError(f"{path}: first line is {first_line!r}, expected the ledger header "
                          f"{HEADER.strip()!r}; move the file away rather than have it rewritten")


def append_row(path, row: dict) -> dict:
    """Append one row (missing columns left empty) and return it as written."""
    path = Path(path)
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"ledger row has unknown column(s) {unknown}; columns are {COLUMNS}")
    row = {column: "" if row.get(column) is None else str(row[column]) for column in COLUMNS}
    line = io.StringIO()
    csv.DictWriter(line, COLUMNS, lineterminator="\n").writerow(row)
    with exclusive_lock(path.parent / f".{path.name}.lock"):   # not the file itself: each append replaces it
        existing = path.read_bytes() if path.exists() else b""
        if existing:
            _check_header(path, existing)
            if not existing.endswith(b"\n"):
                existing += b"\n"
        else:
            existing = HEADER.encode()
        with atomic_path(path) as tmp:
            tmp.write_bytes(existing + line.getvalue().encode())
    return row


def read_rows(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_bytes()
    if text:
        _check_header(path, text)
    return list(csv.DictReader(io.StringIO(text.decode())))


def latest_states(rows: list[dict]) -> list[dict]:
    """One row per submission, its latest, in the order the submissions were first recorded (a later row of a
    submission replaces its value in the dict, where its key was first inserted)."""
    return list({(row["competition"], row["ref"]): row for row in rows}.values())


def rows_for_file(rows: list[dict], sha256: str, competition: str) -> list[dict]:
    """The recorded submissions (not intents) of a file with this content to this competition."""
    return [row for row in latest_states(rows)
            if not is_intent(row) and row["sha256"] == sha256 and row["competition"] == competition]


def is_intent(row: dict) -> bool:
    return row["ref"].startswith(INTENT_PREFIX)


def new_intent_ref() -> str:
    return INTENT_PREFIX + uuid.uuid4().hex[:12]


def unresolved_intents(rows: list[dict], competition: str) -> list[dict]:
    """Intents whose process never said how the upload ended (killed between upload and ledger row)."""
    return [row for row in latest_states(rows)
            if is_intent(row) and row["status"] == "submitting" and row["competition"] == competition]


def submit_lock_path(ledger_path: Path) -> Path:
    """Held across a submit's ledger check, upload and ledger row (kit.files.exclusive_lock)."""
    return ledger_path.parent / f".{ledger_path.name}.submit.lock"
