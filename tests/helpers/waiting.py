"""The one way a test waits for something it cannot be told about by an event: it looks at
the condition itself, again and again, and fails naming what it waited for when a generous
deadline passes. The deadline only turns a hang into a failure; it says nothing about speed,
so no test sleeps a fixed time or reads the clock (tests/project/test_waits.py checks that)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

DEADLINE_S = 60.0
POLL_S = 0.05

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, seconds: float = DEADLINE_S) -> T:
    """The first true value `condition()` returns, asked every POLL_S; an AssertionError
    naming `what` and the last value seen if none comes within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}; last seen: {value!r}")
        time.sleep(POLL_S)
