"""Submit a file, wait for its public score, and keep a ledger.

    ./run.sh submit submissions/blend.csv -m "blend v2"  # validate, upload, wait for the score, record
    ./run.sh submissions                                 # the ledger, pending submissions refreshed
    ./run.sh submit --kernel OWNER/SLUG --version 3      # a code competition: a kernel version's output

The official client does all the talking (see kit/kaggle/api.py for connecting, retries and what each
HTTP error means); this module decides what to send and records what Kaggle confirmed in
submissions/ledger.csv (kit/kaggle/ledger.py). The competition is --competition, else
$KAGGLE_COMPETITION, else the project's.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from kit.errors import KaggleFault, LedgerError, SubmissionError, SubmitError
from kit.files import sha256_file
from kit.kaggle.api import DEFAULT_RETRY, Retry, add_competition_argument, call_with_retry, connect, resolve_competition
from kit.kaggle.ledger import append_row, latest_states, now_utc, read_rows, rows_for_file
from kit.log import log
from kit.options import parse_duration
from kit.paths import Project

MAX_FILE_LIST_PAGES = 200                 # x 200 files a page, when looking for sample_submission.csv


@dataclass(frozen=True)
class Polling:
    """How to wait for a score: checks `interval` apart, growing by `factor`, for `timeout` seconds."""
    interval: float = 5.0
    factor: float = 1.5
    max_interval: float = 60.0
    timeout: float = 1800.0


DEFAULT_POLLING = Polling()


# ----------------------------------------------------------------------------- submit
@dataclass
class SubmitResult:
    status: str                  # dry-run | pending | complete | error
    ref: int | None = None
    public_score: str | None = None
    cv_score: float | None = None
    remaining_today: int | None = None
    error: str | None = None


def submit(path, message: str | None = None, competition: str | None = None, *, sample=None, root=None,
           ledger_path=None, dry_run: bool = False, wait: bool = True, force: bool = False, api=None,
           retry: Retry = DEFAULT_RETRY, polling: Polling = DEFAULT_POLLING, sleep=time.sleep,
           create=None) -> SubmitResult:
    """Validate `path`, refuse a duplicate, submit it, wait for the score and record it in the ledger.

    `create(api, path, message, slug, retry=, sleep=) -> ref` makes the submission (default: upload the
    file, create_submission; submit_kernel passes a code competition's).

    Raises SubmissionError (invalid file), SubmitError (stopped before upload) or KaggleFault; in none of
    those cases was anything submitted or recorded. A relative `path` is read from the project root.
    """
    project = Project.at(root)
    root = project.root
    path = root / path
    ledger_path = Path(ledger_path) if ledger_path else project.ledger
    slug = resolve_competition(competition)
    if not path.is_file():
        raise SubmitError(f"{path}: no such file")
    sha256 = sha256_file(path)
    sidecar = _read_sidecar(path)
    cv_score = _cv_score(sidecar, sha256, path)
    if sidecar.get("competition") not in (None, slug):
        log(f"note: {path.with_suffix('.json')} says it was made from '{sidecar['competition']}'; "
            f"submitting to '{slug}'")

    connection = {}  # a dry run with local data never connects

    def kaggle():
        if "api" not in connection:
            connection["api"] = api or connect()
        return connection["api"]

    from kit.submission import validate_submission_file  # imported here: it brings in pandas, slow to load

    # 1. an invalid file is never uploaded; 2. nor one the ledger already has
    sample_path = find_sample(slug, sample, sidecar, root, kaggle, retry)
    validate_submission_file(path, sample_path)
    earlier = rows_for_file(read_rows(ledger_path), sha256, slug)  # also checks the ledger before uploading
    if earlier and not force:
        row = earlier[-1]
        raise SubmitError(f"{path} (sha256 {sha256[:12]}) was already submitted to '{slug}' on {row['time']} as "
                          f"ref {row['ref']} ({row['status']}, public score {row['public_score'] or '-'}); "
                          f"see {ledger_path}. Pass --force to submit it again")
    message = message or f"{path.stem}" + (f" (CV {cv_score:.4f})" if cv_score is not None else "")
    log(f"{path}: valid against {sample_path}")
    if dry_run:
        log(f"dry run: would submit {path} to '{slug}' with message {message!r}; nothing uploaded")
        return SubmitResult("dry-run", cv_score=cv_score)

    # 3. submit, unless today's allowance is spent; recorded as pending the moment Kaggle confirms
    limits = submission_limits(kaggle(), slug)
    if limits is not None and limits.num_allowed_now == 0 and (limits.num_today > 0 or limits.limited_by_total):
        raise KaggleFault(f"the daily submission limit of '{slug}' is reached ({limits.num_today} used today); "
                          f"stopping before the upload. Try again after midnight UTC", kind="daily_limit")
    ref = (create or create_submission)(kaggle(), path, message, slug, retry=retry, sleep=sleep)
    row = {"time": now_utc(), "file": str(path), "sha256": sha256, "ref": ref, "message": message,
           "competition": slug, "cv_score": "" if cv_score is None else f"{cv_score:.6f}", "status": "pending"}
    _record(ledger_path, row)
    log(f"Kaggle confirmed submission {ref} of {path} to '{slug}'")
    try:
        limits = submission_limits(kaggle(), slug)
    except KaggleFault:  # the submission is made and recorded; the count is only a courtesy now
        limits = None
    remaining = limits.num_allowed_now if limits is not None else None
    if remaining is not None:
        log(f"{remaining} submission(s) remaining today")
    if not wait:
        log("not waiting for the score; `./run.sh submissions` shows it once Kaggle has it")
        return SubmitResult("pending", ref, cv_score=cv_score, remaining_today=remaining)
    # 4. wait for the score (Ctrl-C or giving up leaves the pending row); 5. record it
    try:
        scored = wait_for_score(kaggle(), ref, slug, polling=polling, retry=retry, sleep=sleep)
    except KeyboardInterrupt:
        log(f"\nstopped waiting: submission {ref} stays recorded as pending in {ledger_path}; "
            f"`./run.sh submissions` refreshes it")
        raise
    except KaggleFault as fault:
        log(f"could not read the score of submission {ref}: {fault}\nit stays recorded as pending in "
            f"{ledger_path}; `./run.sh submissions` refreshes it")
        return SubmitResult("pending", ref, cv_score=cv_score, remaining_today=remaining)
    status = _status(scored)
    if status == "pending":
        log(f"submission {ref} is still being scored after {polling.timeout:.0f}s; it stays pending in "
            f"{ledger_path}; `./run.sh submissions` refreshes it")
        return SubmitResult("pending", ref, cv_score=cv_score, remaining_today=remaining)
    _record(ledger_path, {**row, "time": now_utc(), "status": status, "public_score": scored.public_score or "",
                          "error": scored.error_description or ""})
    if status == "error":
        log(f"Kaggle could not score submission {ref}: {scored.error_description or 'no reason given'}")
        return SubmitResult("error", ref, cv_score=cv_score, remaining_today=remaining,
                            error=scored.error_description)
    log(_score_line(scored.public_score, cv_score))
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


def _score_line(public: str | None, cv: float | None) -> str:
    line = f"public score {public or '(not published)'}"
    if cv is not None:
        line += f"   CV score {cv:.5f}"
        try:
            line += f"   (public - CV = {float(public) - cv:+.5f})"
        except (TypeError, ValueError):
            pass
    return line


def _record(ledger_path: Path, row: dict) -> None:
    """Append to the ledger; if that fails Kaggle has the submission anyway, so say so loudly."""
    try:
        append_row(ledger_path, row)
    except (OSError, LedgerError) as error:
        log(f"WARNING: Kaggle has submission {row['ref']} ({row['status']}) but it could not be written to "
            f"{ledger_path}: {error}. Add it by hand: {json.dumps(row)}")
        raise


def find_sample(slug: str, sample, sidecar: dict, root: Path, kaggle, retry: Retry) -> Path:
    """--sample, else the sidecar's, else data/<slug>/'s, else sample_submission.csv from Kaggle."""
    if sample is not None:
        if not Path(sample).is_file():
            raise SubmitError(f"--sample {sample}: no such file")
        return Path(sample)
    recorded = sidecar.get("sample_submission")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    local = sorted((root / "data" / slug).rglob("sample_submission.csv"), key=lambda p: (len(p.parts), str(p)))
    if local:
        return local[0]
    cache = root / ".cache" / "kaggle" / slug
    cached = sorted(cache.rglob("sample_submission.csv"))
    if cached:
        return cached[0]
    log(f"no sample_submission.csv for '{slug}' here (run ./run.sh download); fetching it from Kaggle")
    api = kaggle()
    name = call_with_retry("finding sample_submission.csv", lambda: _find_data_file(api, slug, "sample_submission.csv"),
                           competition=slug, retry=retry)
    call_with_retry(f"downloading {name}", lambda: api.competition_download_file(
        slug, name, path=str(cache), force=True, quiet=True, unzip=True), competition=slug, retry=retry)
    return cache / name


def _find_data_file(api, slug: str, basename: str) -> str:
    page_token = None
    for _ in range(MAX_FILE_LIST_PAGES):
        response = api.competition_list_files(slug, page_token=page_token, page_size=200)
        names = [f.name for f in response.files if f.name.rsplit("/", 1)[-1] == basename]
        if names:
            return min(names, key=len)
        page_token = response.next_page_token
        if not page_token:
            break
    raise SubmitError(f"'{slug}' has no {basename} among its data files; pass --sample PATH")


# ----------------------------------------------------------------------------- Kaggle calls
def create_submission(api, path: Path, message: str, slug: str, *, retry: Retry, sleep=time.sleep) -> int:
    """Upload and create the submission through the client; return the ref Kaggle confirmed.

    The client reports a failed upload through the response message, not an exception, so a
    response without a ref is a failure. Before each retry the newest submissions are checked for
    this one, in case Kaggle made it and only the answer was lost: retrying then would submit twice.
    """
    before = {s.ref for s in _submissions(api, slug, retry)}

    def attempt() -> int:
        response = api.competition_submit(str(path), message, slug, quiet=True)
        if response.ref:
            return int(response.ref)
        if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
            raise KaggleFault(f"uploading {path} to Kaggle failed", kind="upload", retryable=True)
        found = made_anyway()
        if found is not None:
            return found
        raise KaggleFault(f"Kaggle answered {response.message!r} without confirming a submission; "
                          f"nothing was recorded", kind="refused")

    def made_anyway() -> int | None:
        try:
            new = [s for s in _submissions(api, slug, Retry(attempts=1)) if s.ref not in before
                   and s.file_name == path.name and (s.description or "") == message]
        except KaggleFault:
            return None
        return max(s.ref for s in new) if new else None

    return call_with_retry("submitting", attempt, competition=slug, retry=retry, before_retry=made_anyway, sleep=sleep)


def create_code_submission(api, path: Path, message: str, slug: str, *, kernel: str, version: int,
                           file_name: str = "submission.csv", retry: Retry, sleep=time.sleep) -> int:
    """A code competition's submission: Kaggle takes `file_name` from the kernel version's own output (`path`
    is the local copy, validated and recorded). As with a file, a lost answer is looked for before a retry."""
    before = {s.ref for s in _submissions(api, slug, retry)}

    def attempt() -> int:
        response = api.competition_submit_code(file_name, message, slug, kernel=kernel, kernel_version=version,
                                               quiet=True)
        if response.ref:
            return int(response.ref)
        found = made_anyway()
        if found is not None:
            return found
        raise KaggleFault(f"Kaggle answered {response.message!r} without confirming a submission of {kernel} "
                          f"version {version}; nothing was recorded", kind="refused")

    def made_anyway() -> int | None:
        try:
            new = [s for s in _submissions(api, slug, Retry(attempts=1)) if s.ref not in before
                   and (s.description or "") == message]
        except KaggleFault:
            return None
        return max(s.ref for s in new) if new else None

    return call_with_retry(f"submitting {kernel} version {version}", attempt, competition=slug, retry=retry,
                           before_retry=made_anyway, sleep=sleep)


def submit_kernel(kernel: str, version: int, message: str | None = None, competition: str | None = None, *,
                  file_name: str = "submission.csv", root=None, api=None, retry: Retry = DEFAULT_RETRY,
                  **options) -> SubmitResult:
    """Submit a kernel version's output to a code competition: its `file_name` is downloaded (if it is not
    here yet) and validated first; ledger, duplicate guard and score polling are submit()'s."""
    from functools import partial

    from kit.kaggle.kernels import kernel_output_file

    if kernel.count("/") != 1:
        raise SubmitError(f"--kernel {kernel}: a kernel is OWNER/SLUG")
    path = kernel_output_file(kernel, version, file_name, root=root, api=api, retry=retry)
    if message is None:
        sidecar = _read_sidecar(path)
        cv = sidecar.get("cv_score") if sidecar.get("sha256") == sha256_file(path) else None
        message = f"{kernel} v{version}" + (f" (CV {float(cv):.4f})" if cv is not None else "")
    create = partial(create_code_submission, kernel=kernel, version=version, file_name=file_name)
    return submit(path, message, competition, root=root, api=api, retry=retry, create=create, **options)


def _submissions(api, slug: str, retry: Retry) -> list:
    return call_with_retry("listing submissions", lambda: api.competition_submissions(slug) or [],
                           competition=slug, retry=retry)


def submission_limits(api, slug: str):
    """Kaggle's count of submissions left today, or None where it cannot say just now.

    Wrong credentials, a competition not joined or unknown, or rate limiting stop everything; a
    passing failure here does not, since the count is a courtesy (and the create call checks anyway).
    """
    try:
        return call_with_retry("asking for the submission limits", lambda: api.competition_get_submission_limits(slug),
                               competition=slug, retry=Retry(attempts=1))
    except KaggleFault as fault:
        if fault.kind in ("auth", "forbidden", "not_found", "rate_limited"):
            raise
        return None


def get_submission(api, ref: int, slug: str, retry: Retry = DEFAULT_RETRY):
    """The submission's current state, or None while Kaggle does not show it yet (it may lag a moment).

    Called through kagglesdk rather than KaggleApi.get_submission, whose own retry loop waits
    minutes on a dead connection; call_with_retry's bounds apply instead.
    """
    import requests
    from kagglesdk.competitions.types.competition_api_service import ApiGetSubmissionRequest

    request = ApiGetSubmissionRequest()
    request.ref = int(ref)

    def read():
        with api.build_kaggle_client() as client:
            try:
                return client.competitions.competition_api_client.get_submission(request)
            except requests.exceptions.HTTPError as error:
                if error.response is not None and error.response.status_code == 404:
                    return None
                raise

    return call_with_retry(f"reading submission {ref}", read, competition=slug, retry=retry)


def wait_for_score(api, ref: int, slug: str, *, polling: Polling = DEFAULT_POLLING, retry: Retry = DEFAULT_RETRY,
                   sleep=time.sleep):
    """Poll until the submission is scored or errored, or `polling.timeout` passes; return its last state."""
    deadline = time.monotonic() + polling.timeout
    interval = polling.interval
    while True:
        submission = get_submission(api, ref, slug, retry)
        if submission is not None and _status(submission) != "pending":
            return submission
        if time.monotonic() + interval > deadline:
            return submission
        log(f"  submission {ref}: being scored; next check in {interval:.0f}s")
        sleep(interval)
        interval = min(interval * polling.factor, polling.max_interval)


def _status(submission) -> str:
    return "pending" if submission is None else submission.status.name.lower()


# ----------------------------------------------------------------------------- the ledger, listed
def list_submissions(competition: str | None = None, *, root=None, ledger_path=None, refresh: bool = True, api=None,
                     retry: Retry = DEFAULT_RETRY) -> list[dict]:
    """Print and return the latest state of every recorded submission; ask Kaggle about pending ones."""
    ledger_path = Path(ledger_path) if ledger_path else Project.at(root).ledger

    def current() -> list[dict]:
        states = latest_states(read_rows(ledger_path))
        return [row for row in states if competition is None or row["competition"] == competition]

    pending = [row for row in current() if row["status"] == "pending"]
    if refresh and pending:
        try:
            api = api or connect()
            for row in pending:
                scored = get_submission(api, int(row["ref"]), row["competition"], retry)
                if _status(scored) != "pending":
                    append_row(ledger_path, {**row, "time": now_utc(), "status": _status(scored),
                                             "public_score": scored.public_score or "",
                                             "error": scored.error_description or ""})
        except KaggleFault as fault:
            log(f"could not refresh the pending submissions: {fault}")
    rows = current()
    log(format_table(rows) if rows else f"no submissions recorded in {ledger_path}")
    return rows


def format_table(rows: list[dict]) -> str:
    columns = [("time", "time"), ("ref", "ref"), ("file", "file"), ("status", "status"),
               ("public_score", "public"), ("cv_score", "cv"), ("message", "message")]
    cells = [[label for _, label in columns]] + [[row[key] or "-" for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


# ----------------------------------------------------------------------------- command line
def submit_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit submit", description="Validate a submission file, submit it, "
                                     "wait for its public score and record it in submissions/ledger.csv.")
    parser.add_argument("file", nargs="?", help="submissions/NAME.csv (its CV score is read from NAME.json)")
    parser.add_argument("--kernel", metavar="OWNER/SLUG", help="a code competition: submit this kernel's output "
                        "(`facekit kaggle run`) instead of a file")
    parser.add_argument("--version", type=int, help="with --kernel: the kernel version whose output is submitted")
    parser.add_argument("--file-name", default="submission.csv",
                        help="with --kernel: the output file Kaggle scores (default: %(default)s)")
    parser.add_argument("-m", "--message", help="submission description (default: NAME and its CV score)")
    add_competition_argument(parser)
    parser.add_argument("--sample", help="sample_submission.csv to validate against (default: found or fetched)")
    parser.add_argument("--dry-run", action="store_true", help="validate and check the ledger; upload nothing")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the score")
    parser.add_argument("--force", action="store_true", help="submit even if the ledger has this file already")
    parser.add_argument("--poll-timeout", type=parse_duration, default=DEFAULT_POLLING.timeout,
                        help="how long to wait for the score, e.g. 90s, 30m (default: %(default)ss)")
    parser.add_argument("--poll-interval", type=parse_duration, default=DEFAULT_POLLING.interval,
                        help="first wait between checks; later waits grow to 60s (default: %(default)ss)")
    args = parser.parse_args(argv)
    polling = Polling(interval=args.poll_interval, timeout=args.poll_timeout)
    if (args.file is None) == (args.kernel is None) or (args.kernel is None) != (args.version is None):
        parser.error("give a FILE, or --kernel OWNER/SLUG with --version N")
    try:
        if args.kernel:
            result = submit_kernel(args.kernel, args.version, args.message, args.competition,
                                   file_name=args.file_name, sample=args.sample, dry_run=args.dry_run,
                                   wait=not args.no_wait, force=args.force, polling=polling)
        else:
            result = submit(args.file, args.message, args.competition, sample=args.sample, dry_run=args.dry_run,
                            wait=not args.no_wait, force=args.force, polling=polling)
    except SubmissionError as error:
        raise SubmissionError(f"{error}\nnothing was uploaded") from None
    return 1 if result.status == "error" else 0


def submissions_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit submissions", description="List submissions/ledger.csv, "
                                     "asking Kaggle for the scores of pending submissions.")
    parser.add_argument("--competition", help="only this competition's submissions")
    parser.add_argument("--no-refresh", action="store_true", help="do not ask Kaggle about pending submissions")
    args = parser.parse_args(argv)
    list_submissions(args.competition, refresh=not args.no_refresh)
    return 0
