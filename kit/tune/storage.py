"""Where a study lives (journal file or an RDB URL) and how trials of dead workers are failed."""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from kit.errors import ConfigError, RunError
from kit.files import atomic_path
from kit.log import log
from kit.tune.optuna_compat import heartbeat_base, storage_of, trial_id


def journal_heartbeat_storage_class():
    """JournalStorage with Optuna's heartbeat protocol (Optuna implements it only for RDB storages).

    Each running trial's heartbeat thread writes a timestamp into the trial every interval; before a
    worker starts a trial, Optuna's fail_stale_trials() fails RUNNING trials whose last beat is older
    than the grace period. The clocks of the machines sharing a journal file must roughly agree.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import JournalStorage
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, heartbeat_base()):
        KEY = "heartbeat"

        def __init__(self, backend, *, heartbeat_interval: int, grace_period: int):
            super().__init__(backend)
            self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_user_attr(trial_id, self.KEY, time.time())
            except UpdateFinishedTrialError:
                pass  # another worker already failed this trial as stale

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                beat = t.user_attrs.get(self.KEY)
                if beat is None and t.datetime_start is not None:  # died before its first beat
                    beat = t.datetime_start.timestamp()
                if beat is not None and now - beat > self.grace_period:
                    stale.append(trial_id(t))
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return None

    return HeartbeatJournalStorage


def open_storage(storage: str | None, study_dir: Path, *, heartbeat_interval: int, grace_period: int):
    """A journal file (default tuning/<study>/journal.log, or a path) or an RDB URL, with heartbeats."""
    import optuna

    if storage and "://" in storage:
        url = rdb_url(checked_url(storage))
        for attempt in range(5):  # workers starting together on an empty database race to create its tables
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                                      grace_period=grace_period, engine_kwargs={"pool_pre_ping": True})
            except ImportError as err:
                raise ConfigError(f"--storage {mask_url(storage)}: {hide_password(str(err), storage)}") from None
            except Exception as err:  # sqlalchemy errors: connection refused, duplicate table type, ...
                if attempt == 4:
                    raise ConfigError(f"--storage {mask_url(storage)}: {type(err).__name__}: "
                                      f"{hide_password(str(err), storage)}") from None
                time.sleep(0.5 + attempt)
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage) if storage else study_dir / "journal.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_journal(path)
    cls = journal_heartbeat_storage_class()
    return cls(JournalFileBackend(str(path)), heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def repair_journal(path: Path) -> None:
    """Set aside a journal's last record when it was cut short (a crash mid-write, a full disk).

    Optuna skips such a line when reading but appends the next record onto it, which damages the
    journal for good. The partial line goes to `<journal>.damaged-<time>` beside it and the records
    before it are kept. A damaged record before the last is refused: the later ones may depend on it.
    Checked again under Optuna's own lock, since a worker may be in the middle of an append."""
    if not path.is_file() or _first_damaged(path.read_bytes()) is None:
        return
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        damaged = _first_damaged(data)
        if damaged is None:
            return
        line, offset = damaged
        total = data.count(b"\n") + (not data.endswith(b"\n"))
        if line < total:
            raise RunError(f"{path}: record {line} of {total} is damaged, and records after it may depend on it; "
                           "restore the journal from a copy, or start a new study (--study NAME)")
        aside = _set_aside(path, data[offset:])
        os.truncate(path, offset)
    finally:
        lock.release()
    log(f"{path}: its last record was cut short ({len(data) - offset} bytes: a crash mid-write or a full disk); "
        f"set aside in {aside.name}, the {line - 1} record(s) before it kept")


def _first_damaged(data: bytes) -> tuple[int, int] | None:
    """(1-based record number, byte offset) of the first record that is not one whole JSON line."""
    offset, number = 0, 0
    while offset < len(data):
        number += 1
        end = data.find(b"\n", offset)
        if end < 0:
            return number, offset
        try:
            json.loads(data[offset:end])
        except ValueError:
            return number, offset
        offset = end + 1
    return None


def _set_aside(path: Path, damaged: bytes) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    if aside.exists():
        aside = path.with_name(f"{aside.name}-{os.getpid()}")
    with atomic_path(aside) as tmp:
        tmp.write_bytes(damaged)
    return aside


def rdb_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; requirements.txt installs psycopg2: use it if that is all."""
    import importlib.util

    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def checked_url(url: str) -> str:
    """Refuse a password holding '@' before connecting: SQLAlchemy ends the password at the first '@'
    and would try the rest as the host name, printing it in its error."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password and "@" in password:
        raise ConfigError(f"--storage {mask_url(url)}: the password holds '@', which the database driver reads as "
                          "the end of the password; write each '@' in it as %40")
    return url


def hide_password(text: str, url: str) -> str:
    """A driver's error message with the URL's password (as written and decoded) replaced by ***."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    for secret in filter(None, {password, unquote(password or "")}):
        text = text.replace(secret, "***")
    return text


SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "key")


def mask_url(url: str | None) -> str | None:
    """`url` with its password (in the user info or the query) replaced by ***.

    The user info is everything before the netloc's last '@' (urllib's own reading), so a password
    holding '@' or ':' is masked whole. A password holding '/', '?' or '#' ends urllib's netloc early;
    then an '@' is left after it and everything after the scheme is masked."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:   # an unparsable URL (e.g. a bad IPv6 host): show none of it
        return f"{url.split('://', 1)[0]}://***"
    scheme, _, rest = url.partition("://")
    tail = rest[len(parts.netloc):]
    if "@" in tail:
        return f"{scheme}://***"
    user, at, host = parts.netloc.rpartition("@")
    if ":" in user:
        user = user.split(":", 1)[0] + ":***"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
        masked = urlencode([(k, "***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
        tail = tail.replace(f"?{parts.query}", f"?{masked}", 1)
    return f"{scheme}://{user}{at}{host}{tail}"


def describe_storage(storage: str | None, study_dir: Path) -> str:
    if storage and "://" in storage:
        return mask_url(storage)
    return f"journal file {Path(storage) if storage else study_dir / 'journal.log'}"


def process_identity(pid: int | None = None) -> dict:
    """Who runs a trial: enough to tell, from the same machine, whether that process is still alive."""
    pid = pid or os.getpid()

    def read(path):
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    stat = read(f"/proc/{pid}/stat")
    start = stat.rsplit(")", 1)[1].split()[19] if stat else None   # field 22: start time in clock ticks
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"host": socket.gethostname(), "boot": read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns,
            "pid": pid, "start": start}


def is_dead(worker: dict) -> bool:
    """True only when `worker` surely ran on this machine (same host, boot, pid namespace) and is gone."""
    here = process_identity()
    if not worker or any(worker.get(k) != here[k] for k in ("host", "boot", "pid_ns")):
        return False
    if worker.get("start") is not None:
        return process_identity(worker["pid"])["start"] != worker["start"]
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def fail_dead_trials(study) -> list[int]:
    """Fail RUNNING trials whose worker process on this machine has died (no need to wait for the grace period)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_dead(t.user_attrs.get("worker")):
            try:
                storage_of(study).set_trial_user_attr(trial_id(t), "failure", "its worker process died")
                if storage_of(study).set_trial_state_values(trial_id(t), state=TrialState.FAIL):
                    failed.append(t.number)
            except UpdateFinishedTrialError:
                pass
    if failed:
        log(f"trial(s) {failed}: their worker process died; marked FAIL")
    return failed
