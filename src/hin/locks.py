"""An exclusive lock on a folder, so that one hin process at a time writes into it (a training
run directory): two runs into one folder would interleave their logs and overwrite each
other's checkpoints.

The lock is a file in the folder holding the holder's pid, host and start time; it appears
complete or not at all (written beside it, then hard-linked into place, which fails when a
lock is already there). It is removed when the holder finishes. A lock left by a process
that no longer runs on this host (a kill -9, a power cut) is stale and is taken over, saying
so; a lock from another host cannot be checked from here, so the message says how to remove it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hin.errors import HINError
from hin.files import OutOfSpaceError, write_json

LOCK_FILE = "hin.lock"


class FolderLockedError(HINError, RuntimeError):
    """Another process holds the folder's lock; the message names it."""


def _holder(lock: Path) -> dict[str, Any] | None:
    """The recorded holder of `lock`, or None when there is no lock (any more)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise FolderLockedError(f"{lock.parent}: file name too long (a name in a path is "
                                    "at most 255 bytes): choose a shorter folder name") from None
        holder = None
    except ValueError:
        holder = None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        raise FolderLockedError(f"{lock} is damaged (it should name the process holding "
                                f"{lock.parent}); if no hin process works there, delete it")
    return holder


def _running_here(holder: dict[str, Any]) -> bool:
    """Whether the holder may still run: always when it is on another host (not checkable)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process: it runs
        return True
    return True


def _refusal(folder: Path, holder: dict[str, Any]) -> FolderLockedError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    command = holder.get("command", "hin process")
    return FolderLockedError(
        f"{folder} is in use by another {command} (pid {holder['pid']} on {holder.get('host')}, "
        f"since {since}); wait for it to end or stop it. If it no longer runs, delete "
        f"{folder / LOCK_FILE}")


def refuse_if_locked(folder: str | Path) -> None:
    """Refuse early (before loading anything) when a live process holds `folder`'s lock."""
    holder = _holder(Path(folder) / LOCK_FILE)
    if holder is not None and _running_here(holder):
        raise _refusal(Path(folder), holder)


class FolderLock:
    """Holds `folder`'s lock from construction until `release()` (the folder must exist).
    `what` names the holder in the refusal a second process gets (e.g. "hin train");
    `say` reports a stale lock taken over."""

    def __init__(self, folder: str | Path, what: str, say: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.held = False
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": what}
        try:
            draft = write_json(self.folder / f".{LOCK_FILE}.{os.getpid()}.tmp", mine, indent=None)
        except OutOfSpaceError:
            raise OutOfSpaceError(f"no space left on the device to lock {self.folder} (writing "
                                  f"{LOCK_FILE}); nothing was written there. Free some space "
                                  "and try again") from None
        try:
            for _ in range(2):     # a second try after removing a stale lock
                try:
                    os.link(draft, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    holder = _holder(self.path)
                    if holder is not None and _running_here(holder):
                        raise _refusal(self.folder, holder) from None
                    if holder is not None:
                        say(f"{self.path}: removed a stale lock of pid {holder['pid']}, which "
                            "no longer runs (it was killed or crashed)")
                    self.path.unlink(missing_ok=True)
            raise FolderLockedError(f"could not take the lock {self.path}: another process "
                                    "keeps taking it; try again")
        finally:
            draft.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
