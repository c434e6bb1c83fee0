"""The only place the kit touches Optuna's internals, each behind a small function.

Optuna has no public API for three things the tuner needs:
- a heartbeat for JournalStorage (Optuna implements its heartbeat protocol for RDB storages only):
  the protocol's base class lives in `optuna.storages._heartbeat`;
- failing a trial of a dead worker from another process: the study's storage (`study._storage`) and
  the trial's storage id (`trial._trial_id`);
- the stale trials' ids: `FrozenTrial._trial_id`.
SUPPORTED says which Optuna releases these were checked against (tests/test_tune.py checks the
installed one is among them and that every name used here exists); requirements.txt pins the range.
"""
from __future__ import annotations

SUPPORTED = ((4, 2), (6, 0))    # [lowest, first unsupported): 4.2 through 5.x


def optuna_version() -> tuple[int, int]:
    import optuna

    major, minor = optuna.__version__.split(".")[:2]
    return int(major), int(minor)


def check_supported() -> None:
    """Raise RuntimeError when the installed Optuna is outside the tested range."""
    low, high = SUPPORTED
    if not low <= optuna_version() < high:
        import optuna

        raise RuntimeError(f"optuna {optuna.__version__} is outside the range the tuner was tested with "
                           f"({'.'.join(map(str, low))} up to {'.'.join(map(str, high))}, exclusive): "
                           "pip install -r requirements.txt")


def heartbeat_base() -> type:
    """Optuna's heartbeat protocol (record_heartbeat, _get_stale_trial_ids, get_heartbeat_interval, ...)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return BaseHeartbeat


def storage_of(study):
    """The storage object behind a study."""
    return study._storage


def trial_id(trial) -> int:
    """A trial's id inside its storage (not its number within the study)."""
    return trial._trial_id
