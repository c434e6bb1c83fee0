"""Every error the kit expects: one root, `UserError`, and a subclass per kind of problem.

The command line (kit/__main__.py) prints a UserError as `error: <message>` and exits with 2, for
every command; anything else is a bug and keeps its traceback. A message names the option, file, row
or run that is wrong and what to do about it, so no traceback is needed.
"""
from __future__ import annotations

import os


class UserError(Exception):
    """A problem with what the user gave or with the world outside the kit: an option, a file, the
    data, a run directory, the disk, Kaggle. Printed without a traceback."""


class ConfigError(UserError):
    """A training option, a --params value or a --models entry that is not valid."""


class DataError(UserError):
    """The competition's files have problems; the message lists all of them."""


class FoldsError(DataError):
    """A folds file that does not fit the data it is used with."""


class WeightsError(UserError):
    """Pretrained weights are unavailable or do not fit the model."""


class RunError(UserError):
    """A run directory that cannot be used: made with another configuration or other data, incomplete,
    damaged, or in use by another process."""


class BudgetError(UserError):
    """`best` cannot buy anything useful with the time it was given."""


class DiskFullError(UserError):
    """A write ran out of disk space; the message names the folder and what was being written."""


class SubmissionError(UserError):
    """A submission file that must not be uploaded; the message lists every problem found."""


class SubmitError(UserError):
    """A submit or download that was stopped before anything reached Kaggle; the message says why."""


class LedgerError(UserError):
    """submissions/ledger.csv is not one this kit wrote; the message names it."""


# ----------------------------------------------------------------------------- Kaggle

SECRETS_IN_USE: set[str] = set()  # the key or token the Kaggle client authenticated with (any source)


def redact(text: str) -> str:
    """`text` with every Kaggle key or token this process could be using replaced by ***."""
    values = {os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")} | SECRETS_IN_USE
    for secret in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class KaggleFault(UserError):
    """A call to Kaggle that failed; the message says what to do about it and never shows a key.
    `kind` is for callers (auth, forbidden, not_found, rate_limited, daily_limit, server, ...)."""

    def __init__(self, message: str, kind: str = "other", retryable: bool = False):
        super().__init__(redact(message))
        self.kind = kind
        self.retryable = retryable


class MissingCredentials(KaggleFault):
    def __init__(self, message: str):
        super().__init__(message, kind="credentials")
