"""Submit a file, wait for its public score, and keep a ledger.

    ./run.sh submit submissions/blend.csv -m "blend v2"  # validate, upload, wait for the score, record
    ./run.sh submissions                                 # the ledger, pending submissions refreshed
    ./run.sh submit --kernel OWNER/SLUG --version 3      # a code competition: a kernel version's output

The official client does all the talking (see kit/kaggle/api.py for connecting, retries and what each
HTTP error means); this module decides what to send and records what Kaggle confirmed in
submissions/ledger.csv (kit/kaggle/ledger.py). The competition is --competition, else
$KAGGLE_COMPETITION, else the project's.

A daily submission is never wasted twice: the ledger check, the upload and the ledger row are one
critical section (a lock beside the ledger, held by one submit at a time), an intent row is written
before the upload, and an intent left by a killed process is resolved against Kaggle's own list of
submissions before anything new is uploaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kit.errors import KaggleFault, LedgerError, SubmissionError, SubmitError
from kit.files import exclusive_lock, sha256_file
from kit.kaggle.api import Services, competition, resolve_competition
from kit.kaggle.download import find_sample
from kit.kaggle.ledger import (
    append_row,
    new_intent_ref,
    now_utc,
    read_rows,
    rows_for_file,
    submit_lock_path,
    unresolved_intents,
)
from kit.kaggle.scores import score_line, status_of, wait_for_score
from kit.log import log
from kit.paths import Project

CLOCK_SKEW = timedelta(minutes=5)         # between this machine's clock and Kaggle's, when matching an intent


@dataclass
class SubmitResult:
    status: str                  # dry-run | pending | complete | error
    ref: int | None = None
    public_score: str | None = None
    cv_score: float | None = None
    remaining_today: int | None = None
    error: str | None = None


def submit(path, message: str | None = None, slug: str | None = None, **options) -> SubmitResult:
    """Validate the file `path`, refuse a duplicate, upload it to competition `slug`, wait for the score and
    record it in the ledger. `options`: submit_with's (sample, root, dry_run, wait, force, services)."""
    return submit_with(create_submission, path, message, slug, **options)


def submit_with(create, path, message: str | None, slug: str | None, *, sample=None, root=None,
                dry_run: bool = False, wait: bool = True, force: bool = False, services: Services | None = None,
                label: str | None = None) -> SubmitResult:
    """submit(), the submission made by `create(services, path, message, slug) -> ref` (a file upload, or a
    code competition's kernel output: kit/kaggle/code_submission.py). The default message is `label` (the
    file's name) and the CV score.

    Raises SubmissionError (invalid file), SubmitError (stopped before upload) or KaggleFault; in none of
    those cases was anything submitted or recorded. A relative `path` is read from the project root.
    """
    project = Project.at(root)
    path = project.root / path
    ledger_path = project.ledger
    slug = resolve_competition(slug)
    services = services or Services()
    if not path.is_file():
        raise SubmitError(f"{path}: no such file")
    sha256 = sha256_file(path)
    sidecar = _read_sidecar(path)
    cv_score = _cv_score(sidecar, sha256, path)
    estimate = sidecar.get("leaderboard_estimate") if sidecar.get("sha256") == sha256 else None
    from kit.submission import validate_submission_file  # imported here: it brings in pandas, slow to load

    # 1. an invalid file, or one made for another competition, is never uploaded
    def target_sample() -> Path:
        return find_sample(slug, sample, sidecar, project.root, services)

    check_competition(path, sidecar, slug, force, target_sample)
    sample_path = target_sample()
    validate_submission_file(path, sample_path)
    message = message or (label or path.stem) + (f" (CV {cv_score:.4f})" if cv_score is not None else "")
    row = {"file": str(path), "sha256": sha256, "message": message, "competition": slug,
           "cv_score": "" if cv_score is None else f"{cv_score:.6f}"}
    with exclusive_lock(submit_lock_path(ledger_path)):
        # 2. nor one the ledger (or Kaggle, for an upload whose process was killed) already has
        resolve_intents(services, ledger_path, slug)
        refuse_duplicate(ledger_path, path, sha256, slug, force)
        log(f"{path}: valid against {sample_path}")
        if dry_run:
            log(f"dry run: would submit {path} to '{slug}' with message {message!r}; nothing uploaded")
            return SubmitResult("dry-run", cv_score=cv_score)
        # 3. submit, unless today's allowance is spent; recorded as pending the moment Kaggle confirms
        check_allowance(services, slug)
        ref = upload(services, path, row, ledger_path, create)
    log(f"Kaggle confirmed submission {ref} of {path} to '{slug}'")
    return follow_score(services, {**row, "ref": ref, "status": "pending"}, ledger_path, cv_score=cv_score,
                        wait=wait, estimate=estimate)


def check_competition(path: Path, sidecar: dict, slug: str, force: bool, target_sample) -> None:
    """Refuse a file whose sidecar names another competition, unless --force.

    Local data is named after its folder or zip (`--data utkface-age-gender.zip` makes 'utkface-age-gender'),
    not after the Kaggle slug, so a sidecar whose sample submission lists exactly the ids of the target's
    own (`target_sample()`, found or fetched) is taken as made for it. Synthetic sample data is never
    any competition's: that is known without asking Kaggle."""
    made_for = sidecar.get("competition")
    if made_for in (None, slug):
        return
    recorded = Path(sidecar.get("sample_submission") or "")
    synthetic = (recorded.parent / ".synthetic").is_file()
    if not synthetic and recorded.is_file() and _same_ids(recorded, target := target_sample()):
        log(f"note: {path.with_suffix('.json').name} names the data '{made_for}', whose sample submission lists "
            f"the ids of '{slug}''s ({target}): submitting to '{slug}'")
        return
    if not force:
        why = "synthetic sample data" if synthetic else f"data whose sample submission is not '{slug}''s"
        raise SubmitError(f"{path} was made for '{made_for}' ({why}, says {path.with_suffix('.json').name}); "
                          f"nothing was uploaded. Make the file from '{slug}''s data, pass --competition "
                          f"{made_for} if that is where it goes, or --force to submit it anyway")
    log(f"--force: {path} was made for '{made_for}'; submitting to '{slug}', checked against its own sample")


def _same_ids(one: Path, other: Path) -> bool:
    from kit.submission import read_sample

    try:
        ids = [read_sample(p).get("id") for p in (one, other)]
    except (OSError, SubmissionError):   # unreadable: not shown to be the same
        return False
    return all(i is not None for i in ids) and set(ids[0].str.strip()) == set(ids[1].str.strip())


def refuse_duplicate(ledger_path: Path, path: Path, sha256: str, slug: str, force: bool) -> None:
    earlier = rows_for_file(read_rows(ledger_path), sha256, slug)
    if earlier and not force:
        row = earlier[-1]
        raise SubmitError(f"{path} (sha256 {sha256[:12]}) was already submitted to '{slug}' on {row['time']} as "
                          f"ref {row['ref']} ({row['status']}, public score {row['public_score'] or '-'}); "
                          f"see {ledger_path}. Pass --force to submit it again")


def check_allowance(services: Services, slug: str) -> None:
    limits = submission_limits(services, slug)
    if limits is not None and limits.num_allowed_now == 0 and (limits.num_today > 0 or limits.limited_by_total):
        raise KaggleFault(f"the daily submission limit of '{slug}' is reached ({limits.num_today} used today); "
                          f"stopping before the upload. Try again after midnight UTC", kind="daily_limit")


def upload(services: Services, path: Path, row: dict, ledger_path: Path, create) -> int:
    """The intent row, the upload (`create`), then the confirmed submission's
    pending row and the intent resolved."""
    intent = {**row, "time": now_utc(), "ref": new_intent_ref(), "status": "submitting"}
    append_row(ledger_path, intent)
    try:
        ref = create(services, path, row["message"], row["competition"])
    except KaggleFault as fault:   # create_submission looked for a lost answer first: nothing was made
        append_row(ledger_path, {**intent, "time": now_utc(), "status": "abandoned", "error": str(fault)})
        raise
    _record(ledger_path, {**row, "time": now_utc(), "ref": ref, "status": "pending"})
    append_row(ledger_path, {**intent, "time": now_utc(), "status": "confirmed", "error": f"Kaggle ref {ref}"})
    return ref


def resolve_intents(services: Services, ledger_path: Path, slug: str) -> None:
    """Settle intents left `submitting` by a killed submit: a submission Kaggle lists for that file,
    message and time is recorded (pending, so its score is fetched later); otherwise the upload never
    happened and the intent is abandoned."""
    rows = read_rows(ledger_path)
    open_intents = unresolved_intents(rows, slug)
    if not open_intents:
        return
    recorded = {row["ref"] for row in rows}
    listed = _submissions(services, slug)
    for intent in open_intents:
        since = datetime.strptime(intent["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - CLOCK_SKEW
        found = sorted((s for s in listed if str(s.ref) not in recorded and s.file_name == Path(intent["file"]).name
                        and (s.description or "") == intent["message"] and _utc(s.date) >= since),
                       key=lambda s: _utc(s.date))
        if found:
            ref = int(found[0].ref)
            recorded.add(str(ref))
            append_row(ledger_path, {**intent, "time": now_utc(), "ref": ref, "status": "pending"})
            append_row(ledger_path, {**intent, "time": now_utc(), "status": "confirmed",
                                     "error": f"Kaggle ref {ref}, found on Kaggle after the submit was stopped"})
            log(f"an earlier submit of {intent['file']} was stopped after Kaggle took it: recorded Kaggle's "
                f"submission {ref} in {ledger_path}")
        else:
            append_row(ledger_path, {**intent, "time": now_utc(), "status": "abandoned",
                                     "error": "the submit was stopped before Kaggle took the upload"})
            log(f"an earlier submit of {intent['file']} was stopped before Kaggle took it; nothing was submitted")


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)   # kagglesdk's are naive, in UTC


def follow_score(services: Services, row: dict, ledger_path: Path, *, cv_score, wait: bool,
                 estimate: dict | None = None) -> SubmitResult:
    """After the upload: today's remaining count, then (unless --no-wait) the score, recorded and shown beside
    the CV score and the leaderboard estimate."""
    ref, slug = row["ref"], row["competition"]
    try:
        limits = submission_limits(services, slug)
    except KaggleFault:  # the submission is made and recorded; the count is only a courtesy now
        limits = None
    remaining = limits.num_allowed_now if limits is not None else None
    if remaining is not None:
        log(f"{remaining} submission(s) remaining today")
    if not wait:
        log("not waiting for the score; `facekit submissions` shows it once Kaggle has it")
        return SubmitResult("pending", ref, cv_score=cv_score, remaining_today=remaining)
    try:
        scored = wait_for_score(services, ref, slug)
    except KeyboardInterrupt:
        log(f"\nstopped waiting: submission {ref} stays recorded as pending in {ledger_path}; "
            "`facekit submissions` refreshes it")
        raise
    except KaggleFault as fault:
        log(f"could not read the score of submission {ref}: {fault}\nit stays recorded as pending in "
            f"{ledger_path}; `facekit submissions` refreshes it")
        return SubmitResult("pending", ref, cv_score=cv_score, remaining_today=remaining)
    status = status_of(scored)
    if status == "pending":
        log(f"submission {ref} is still being scored; it stays pending in "
            f"{ledger_path}; `facekit submissions` refreshes it")
        return SubmitResult("pending", ref, cv_score=cv_score, remaining_today=remaining)
    _record(ledger_path, {**row, "time": now_utc(), "status": status, "public_score": scored.public_score or "",
                          "error": scored.error_description or ""})
    if status == "error":
        log(f"Kaggle could not score submission {ref}: {scored.error_description or 'no reason given'}")
        return SubmitResult("error", ref, cv_score=cv_score, remaining_today=remaining,
                            error=scored.error_description)
    log(score_line(scored.public_score, cv_score, estimate))
    log(f"recorded in {ledger_path}")
    return SubmitResult("complete", ref, scored.public_score, cv_score, remaining)


def _read_sidecar(path: Path) -> dict:
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except ValueError as error:
        raise SubmitError(f"{sidecar}: not valid JSON ({error})") from error


def _cv_score(sidecar: dict, sha256: str, path: Path) -> float | None:
    if "cv_score" not in sidecar:
        log(f"note: no CV score for {path} (no {path.with_suffix('.json').name} from the ensembler)")
        return None
    if sidecar.get("sha256") not in (None, sha256):
        log(f"warning: {path} changed after the ensembler wrote it (sha256 differs from "
            f"{path.with_suffix('.json').name}); its CV score is not recorded")
        return None
    return float(sidecar["cv_score"])


def _record(ledger_path: Path, row: dict) -> None:
    """Append to the ledger; if that fails Kaggle has the submission anyway, so say so loudly."""
    try:
        append_row(ledger_path, row)
    except (OSError, LedgerError) as error:
        log(f"WARNING: Kaggle has submission {row['ref']} ({row['status']}) but it could not be written to "
            f"{ledger_path}: {error}. Add it by hand: {json.dumps(row)}")
        raise


# ----------------------------------------------------------------------------- Kaggle calls
def create_submission(services: Services, path: Path, message: str, slug: str, *, kernel: str | None = None,
                      version: int | None = None, file_name: str = "submission.csv") -> int:
    """Upload and create the submission through the client; return the ref Kaggle confirmed. With `kernel`, a
    code competition's: Kaggle takes `file_name` from that version's own output (`path`, its local copy, is
    what was validated and is recorded).

    The client reports a failed upload through the response message, not an exception, so a
    response without a ref is a failure. Before each retry the newest submissions are checked for
    this one, in case Kaggle made it and only the answer was lost: retrying then would submit twice.
    """
    api = services.client()
    before = {s.ref for s in _submissions(services, slug)}

    def attempt() -> int:
        if kernel:
            response = api.competition_submit_code(file_name, message, slug, kernel=kernel, kernel_version=version,
                                                   quiet=True)
        else:
            response = api.competition_submit(str(path), message, slug, quiet=True)
        if response.ref:
            return int(response.ref)
        if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
            raise KaggleFault(f"uploading {path} to Kaggle failed", kind="upload", retryable=True)
        found = made_anyway()
        if found is not None:
            return found
        of = f" of {kernel} version {version}" if kernel else ""
        raise KaggleFault(f"Kaggle answered {response.message!r} without confirming a submission{of}; nothing was "
                          "recorded", kind="refused")

    def made_anyway() -> int | None:
        try:
            new = [s for s in _submissions(services, slug, once=True) if s.ref not in before
                   and (kernel or s.file_name == path.name) and (s.description or "") == message]
        except KaggleFault:
            return None
        return max(s.ref for s in new) if new else None

    return services.call(f"submitting {kernel} version {version}" if kernel else "submitting", attempt,
                         competition(slug), before_retry=made_anyway)


def _submissions(services: Services, slug: str, *, once: bool = False) -> list:
    return services.call("listing submissions", lambda: services.client().competition_submissions(slug) or [],
                         competition(slug), once=once)


def submission_limits(services: Services, slug: str):
    """Kaggle's count of submissions left today, or None where it cannot say just now.

    Wrong credentials, a competition not joined or unknown, or rate limiting stop everything; a
    passing failure here does not, since the count is a courtesy (and the create call checks anyway).
    """
    try:
        return services.call("asking for the submission limits",
                             lambda: services.client().competition_get_submission_limits(slug), competition(slug),
                             once=True)
    except KaggleFault as fault:
        if fault.kind in ("auth", "forbidden", "not_found", "rate_limited"):
            raise
        return None
