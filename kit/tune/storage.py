"""Where a study lives (journal file or an RDB URL) and how trials of dead workers are failed."""
from __future__ import annotations

import os
import re
import socket
import time
import warnings
from pathlib import Path

from kit.errors import ConfigError
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
        url = rdb_url(storage)
        for attempt in range(5):  # workers starting together on an empty database race to create its tables
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                                      grace_period=grace_period, engine_kwargs={"pool_pre_ping": True})
            except ImportError as err:
                raise ConfigError(f"--storage {mask_url(storage)}: {err}") from None
            except Exception as err:  # sqlalchemy errors: connection refused, duplicate table type, ...
                if attempt == 4:
                    raise ConfigError(f"--storage {mask_url(storage)}: {type(err).__name__}: {err}") from None
                time.sleep(0.5 + attempt)
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage) if storage else study_dir / "journal.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = journal_heartbeat_storage_class()
    return cls(JournalFileBackend(str(path)), heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def rdb_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; requirements.txt installs psycopg2: use it if that is all."""
    import importlib.util

    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def mask_url(url: str | None) -> str | None:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url) if url else url


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
