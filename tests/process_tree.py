"""What the tests of processes left behind share (tests/test_cv.py, tests/test_data.py): a process's
children, read from /proc, and a wait for processes to be gone."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None when there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := state(int(entry.name))) is not None and st[1] == parent:
            found.append(int(entry.name))
    return sorted(found)


def wait_for_children(parent: int, count: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while len(children := children_of(parent)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return children


def running(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie, dead but not yet reaped by its new parent, is not)."""
    return [pid for pid in pids if (st := state(pid)) is not None and st[0] != "Z"]


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait up to `seconds` for `pids` to end; the ones still running then."""
    deadline = time.monotonic() + seconds
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running(pids)


def kill_all(pids: list[int]) -> None:
    """Clean up after a test that failed: what it left behind is stopped."""
    for pid in running(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
