"""Child processes that die with their parent, and a SIGTERM that stops work like Ctrl-C.

A `--devices` worker or an image-decoding pool process whose parent is killed (kill -9, the OOM
killer, a `timeout` that ends in SIGKILL) would otherwise go on training, or block forever on its
pool's queue, with init as its parent. On Linux the child asks the kernel for SIGKILL the moment its
parent goes (prctl PR_SET_PDEATHSIG); elsewhere there is no such request and nothing is set.

The kernel sends that signal when the *thread* that started the child ends, so children are started
from the thread that waits for them (the kit's main thread).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
# Looked up here, in the parent: a child forked from a process with threads should not have to load
# libraries (another thread may have held the loader's lock at the fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a batch scheduler), raised where Ctrl-C would be, so the same cleanup runs."""


def die_with_parent(parent_pid: int) -> None:
    """In a child: be killed when `parent_pid` ends; exit at once if it has ended already."""
    if _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:   # it ended before the request: no signal will come
        os._exit(1)


@contextmanager
def sigterm_raises_terminated():
    """Within the block, SIGTERM raises Terminated (in the main thread) instead of ending the process
    on the spot, so `finally` and `except` blocks run. A handler someone else installed is kept."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
