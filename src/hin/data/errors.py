"""The error every data problem raises, and how it lists the ids at fault.

Data problems are reported, never papered over: the message names the file, how many
entries are affected, the first few ids, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable

from hin.errors import HINError


class DataError(HINError, ValueError):
    """A data file that is missing, malformed or inconsistent; the message says which and why."""


def first_ids(ids: Iterable[object], limit: int = 5) -> str:
    """`1, 2, 3, 4, 5, ...` — enough ids to find the problem without flooding the terminal."""
    ids = list(ids)
    shown = ", ".join(str(item) for item in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")
