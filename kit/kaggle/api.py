"""Talking to Kaggle through the official client: connecting, retrying, and saying what went wrong.

The client (`kaggle`, built on `kagglesdk`) does every call; this module only decides what to do
when a call fails. `import kaggle` authenticates at import time and prints its own help, so the
import happens here, lazily and with its output held back, and never at the top of a module.

Connection errors and HTTP 5xx are retried with backoff (`Retry`); every other fault stops, worded for its
subject (`Subject`: a competition to join, a dataset to own, ...) by `http_fault`. A key or token never
reaches a message: everything shown passes through `redact`.
"""
from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kit.errors import SECRETS_IN_USE, KaggleFault, MissingCredentials
from kit.log import log, warn

TOKEN_URL = "https://www.kaggle.com/settings/api"


def competition_url(competition: str) -> str:
    return f"https://www.kaggle.com/competitions/{competition}"


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry a call that failed for a passing reason."""
    attempts: int = 4           # tries in all, the first included
    first_delay: float = 2.0    # seconds before the second try
    factor: float = 2.0         # each further wait is this much longer
    max_delay: float = 30.0

    def delay(self, failed_attempts: int) -> float:
        return min(self.first_delay * self.factor ** (failed_attempts - 1), self.max_delay)


@dataclass(frozen=True)
class Polling:
    """How to wait for Kaggle to finish something: checks `interval` apart, growing by `factor` up to
    `max_interval`, for `timeout` seconds."""
    interval: float = 5.0
    factor: float = 1.5
    max_interval: float = 60.0
    timeout: float = 1800.0


DEFAULT_POLLING = Polling()       # a submission's score


@dataclass
class Services:
    """What every Kaggle function talks to and waits with, taken as one keyword (`services=`): tests pass a fake
    clock, a fast Retry or quick polling in it instead of a keyword hook per function. `polling` None: each
    waiting function's own default."""
    api: object = None                                   # the official client; connect() on first use
    retry: Retry = Retry()
    polling: Polling | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def client(self):
        """The client, connected on first use: a dry run with local data never connects."""
        if self.api is None:
            self.api = connect()
        return self.api

    def call(self, what: str, call, subject: Subject, *, once: bool = False, before_retry=None,
             missing_ok: bool = False):
        """Run `call()`; retry connection errors and 5xx with backoff (unless `once`); raise KaggleFault for the
        rest, but answer Kaggle's 404 with None when `missing_ok` (for what Kaggle may not show yet or at all).

        `before_retry()` runs before each retry and may return a result instead (used to find a
        submission Kaggle made although its answer never arrived).
        """
        attempts = 1 if once else self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - classify decides what is ours to handle
                fault = classify(error, subject)
                if fault is None:
                    raise
                if missing_ok and fault.kind == "not_found":
                    return None
                if not fault.retryable or attempt == attempts:
                    if fault.retryable:
                        fault = KaggleFault(f"{what}: gave up after {attempt} tries: {fault}", fault.kind)
                    raise fault from error
                delay = self.retry.delay(attempt)
                warn(f"{what}: {fault}; retrying in {delay:.1f}s (try {attempt + 1} of {attempts})")
                self.sleep(delay)
                if before_retry is not None:
                    found = before_retry()
                    if found is not None:
                        return found
        raise AssertionError("unreachable")

    def send(self, what: str, call, subject: Subject):
        """`call()` once (a retry could make a second dataset or kernel version), with the client's ValueErrors
        (its way of saying bad metadata, a denied kernel or a failed upload) raised as KaggleFaults; what it
        printed meanwhile is kept in the message."""
        def guarded():
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                try:
                    return call()
                except ValueError as error:
                    said = printed.getvalue().strip()
                    raise KaggleFault(f"{what}: {error}" + (f" ({said})" if said else ""), kind="refused") from error
        return self.call(what, guarded, subject, once=True)

    def poll(self, read, finished, *, default: Polling, note=None):
        """Call read() until finished(answer) or the polling's timeout; return (last answer, finished).
        note(answer, wait) runs before each wait; the waits grow by the polling's factor."""
        polling = self.polling or default
        deadline = self.clock() + polling.timeout
        interval = polling.interval
        while True:
            answer = read()
            if finished(answer):
                return answer, True
            if self.clock() + interval > deadline:
                return answer, False
            if note is not None:
                note(answer, interval)
            self.sleep(interval)
            interval = min(interval * polling.factor, polling.max_interval)


# ----------------------------------------------------------------------------- connecting
def connect():
    """Import the official client, authenticate with whatever it supports, and return its KaggleApi."""
    with contextlib.redirect_stdout(io.StringIO()):  # `import kaggle` authenticates and prints
        from kaggle.api.kaggle_api_extended import KaggleApi
    api = KaggleApi()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # its help for missing credentials is replaced by ours
            Services(api).call("checking the Kaggle credentials", api.authenticate, Subject("account", "yours"))
    except SystemExit:  # the client's way of saying "no credentials"
        raise MissingCredentials(missing_credentials_message(Path(api.config))) from None
    finally:  # its warnings are passed on: a kaggle.json others can read lets them submit as you
        for line in dict.fromkeys(printed.getvalue().splitlines()):
            if line.startswith("Warning:"):
                warn(line)
    SECRETS_IN_USE.update(str(api.config_values.get(name) or "") for name in ("key", "token"))
    return api


def missing_credentials_message(config_file: Path) -> str:
    token_note = ""
    if os.environ.get("KAGGLE_API_TOKEN"):
        token_note = "KAGGLE_API_TOKEN is set, but Kaggle did not accept it (expired or revoked).\n"
    return (f"{token_note}No usable Kaggle credentials. Create an API token at {TOKEN_URL} "
            f"(\"Create New Token\"), then either\n"
            f"  - save the kaggle.json it gives you as {config_file} and run: chmod 600 {config_file}\n"
            f"  - or export KAGGLE_USERNAME=<your user name> KAGGLE_KEY=<the key from kaggle.json>\n"
            f"  - or export KAGGLE_API_TOKEN=<a new-style API token>")


# ----------------------------------------------------------------------------- faults
@dataclass(frozen=True)
class Subject:
    """What a call is about, for the words of its faults: ("competition", slug), ("dataset", OWNER/SLUG),
    ("kernel", OWNER/SLUG[ version N])."""
    kind: str
    name: str

    def forbidden(self, said: str) -> str:
        if self.kind == "competition":
            return (f"Kaggle refused access to the competition '{self.name}' (HTTP 403){said}. Join the competition "
                    f"and accept its rules at {competition_url(self.name)}/rules, then try again")
        return f"Kaggle refused these credentials the {self.kind} {self.name} (HTTP 403){said}" + self._owner_hint()

    def not_found(self, said: str) -> str:
        if self.kind == "competition":
            return (f"unknown competition '{self.name}' (HTTP 404){said}: check the slug in --competition or "
                    "KAGGLE_COMPETITION (the part after /competitions/ in its URL)")
        return f"Kaggle shows these credentials no {self.kind} {self.name} (HTTP 404){said}" + self._owner_hint()

    def _owner_hint(self) -> str:
        return "; the slug's owner must be your user name" if self.kind == "dataset" else ""


def competition(slug: str) -> Subject:
    return Subject("competition", slug)


def classify(error: BaseException, subject: Subject) -> KaggleFault | None:
    """Turn a failed call's exception into a KaggleFault, or None when it is not a Kaggle call failing."""
    import requests

    if isinstance(error, KaggleFault):
        return error
    if isinstance(error, requests.exceptions.HTTPError) and error.response is not None:
        return http_fault(error.response.status_code, _server_message(error), subject)
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return KaggleFault(f"could not reach Kaggle: {error}", kind="connection", retryable=True)
    return None


def _server_message(error) -> str:
    try:
        return str(error.response.json().get("message") or error)
    except (ValueError, AttributeError):
        return str(error)


def http_fault(status: int, message: str, subject: Subject) -> KaggleFault:
    said = f" (Kaggle said: {message})" if message else ""
    if status >= 500:
        return KaggleFault(f"Kaggle is having trouble (HTTP {status}){said}", kind="server", retryable=True)
    if status == 401:
        return KaggleFault(f"Kaggle rejected the credentials (HTTP 401). Check KAGGLE_USERNAME/KAGGLE_KEY, "
                           f"KAGGLE_API_TOKEN or kaggle.json, or create a new token at {TOKEN_URL}", kind="auth")
    if status == 403:
        return KaggleFault(subject.forbidden(said), kind="forbidden")
    if status == 404:
        return KaggleFault(subject.not_found(said), kind="not_found")
    if status == 429:
        return KaggleFault(f"Kaggle is rate-limiting these calls (HTTP 429){said}; stopping. Try again later",
                           kind="rate_limited")
    if looks_like_daily_limit(message):
        return KaggleFault(f"the daily submission limit is reached{said}; stopping. Try again after "
                           f"midnight UTC", kind="daily_limit")
    return KaggleFault(f"Kaggle refused the call (HTTP {status}){said}", kind="refused")


def looks_like_daily_limit(message: str) -> bool:
    text = message.lower()
    return "daily" in text and ("allowance" in text or "limit" in text)


# ----------------------------------------------------------------------------- shared by the Kaggle commands
def resolve_competition(competition: str | None = None) -> str:
    from kit.paths import DEFAULT_COMPETITION

    return competition or os.environ.get("KAGGLE_COMPETITION") or DEFAULT_COMPETITION


def owner_ref(name: str | None, default_slug: str, *, dry_run: bool, services: Services) -> str:
    """OWNER/SLUG of a dataset or kernel given as [OWNER/]SLUG, or not at all (`default_slug`): the owner is
    KAGGLE_USERNAME, else the client's user name (a dry run does not connect: USERNAME)."""
    if name and "/" in name:
        return name
    owner = os.environ.get("KAGGLE_USERNAME")
    if not owner and not dry_run:
        owner = services.client().config_values.get("username")
    if not owner:
        owner = "USERNAME"
        log(f"dry run without KAGGLE_USERNAME: written as USERNAME/{name or default_slug}")
    return f"{owner}/{name or default_slug}"


def add_competition_argument(parser) -> None:
    parser.add_argument("--competition", help="competition slug (default: $KAGGLE_COMPETITION, else the project's)")
