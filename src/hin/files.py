"""Opening the files a user names, with one message for each way a path can be wrong.

A missing path says "does not exist", a folder where a file belongs says "is a directory",
and malformed JSON names the file and the position; each message ends with what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hin.errors import HINError


class FileFormatError(HINError, ValueError):
    """A file that exists but does not hold what it should (e.g. JSON that does not parse)."""


def require_file(path: str | Path, what: str, fix: str = "") -> Path:
    """`path` as a Path when it is an existing file; otherwise an error naming `what` it should
    be (e.g. "vocabulary file") and, when given, `fix` (how to get a right one)."""
    path = Path(path)
    advice = f"; {fix}" if fix else ""
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file{advice}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist{advice}")
    return path


def read_json(path: str | Path, what: str, fix: str = "",
              error: type[HINError] = FileFormatError) -> Any:
    """The parsed content of JSON file `path`; `error` is the class raised for bad JSON, so each
    caller keeps its own error type (DataError, MetricsError, ...)."""
    path = require_file(path, what, fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{what} {path} is not valid JSON: {problem}") from problem
