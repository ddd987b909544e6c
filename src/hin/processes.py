"""Helper processes never outlive the command that started them.

DataLoader workers blocked on a full pipe to a parent killed with SIGKILL are reparented
and wait forever (torch's own watchdog only runs between items). `die_with_parent`, a
`worker_init_fn`, asks Linux to SIGKILL the worker when its parent dies (PR_SET_PDEATHSIG);
elsewhere a daemon thread watches the parent's pid and ends the worker when it changes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 0.5


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """Make this worker process end when `parent` (the pid that started it) does."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch, args=(parent,), daemon=True, name="die-with-parent").start()
    if os.getppid() != parent:     # the parent died before the request took effect
        os._exit(1)


def worker_init() -> functools.partial:
    """The `worker_init_fn` for this process's DataLoaders: workers die with it."""
    return functools.partial(die_with_parent, os.getpid())


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)
