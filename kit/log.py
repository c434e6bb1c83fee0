"""One channel for everything the kit says: the `facekit` logger.

    from kit.log import log, warn, tagged
    log("fold 0 done")                  # a line on stdout, flushed at once (progress through a pipe)
    warn("kaggle.json is readable")     # a line on stderr
    with tagged("w1"), tagged("trial 3"):
        log("start")                    # -> "[w1] [trial 3] start", from any module called inside

Tags are kept per context (contextvars), so the tuner's worker and trial tags reach every line that the
training code prints on their behalf. Messages are ordinary `logging` records: tests read them with
pytest's caplog, and a program that embeds the kit can send them elsewhere with logging's own means.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys

LOGGER = logging.getLogger("facekit")
_TAGS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("facekit_log_tags", default=())


class _Tagged(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.tags = _TAGS.get()
        return True


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return "".join(f"[{tag}] " for tag in getattr(record, "tags", ())) + record.getMessage()


class _StreamOfTheMoment(logging.StreamHandler):
    """Writes to whatever sys.stdout (or sys.stderr) is when the line is emitted, not when the handler
    was made: pytest's capsys and contextlib.redirect_stdout then see the lines."""

    def __init__(self, name: str, *, below: int | None = None, level: int = logging.NOTSET):
        super().__init__()
        self.name_of_stream = name
        self.setLevel(level)
        if below is not None:
            self.addFilter(lambda record: record.levelno < below)
        self.setFormatter(_Formatter())

    @property
    def stream(self):
        return getattr(sys, self.name_of_stream)

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it; the property decides
        pass


def _configure() -> None:
    if getattr(LOGGER, "_facekit_configured", False):
        return
    LOGGER.setLevel(logging.INFO)
    LOGGER.addFilter(_Tagged())
    LOGGER.addHandler(_StreamOfTheMoment("stdout", below=logging.WARNING))
    LOGGER.addHandler(_StreamOfTheMoment("stderr", level=logging.WARNING))
    LOGGER.propagate = True   # caplog and embedding programs listen on the root logger
    LOGGER._facekit_configured = True


_configure()


def log(message: object) -> None:
    LOGGER.info("%s", message)


def warn(message: object) -> None:
    LOGGER.warning("%s", message)


@contextlib.contextmanager
def tagged(tag: str):
    """Prefix every line logged inside the block with `[tag] `."""
    token = _TAGS.set(_TAGS.get() + (tag,))
    try:
        yield
    finally:
        _TAGS.reset(token)
