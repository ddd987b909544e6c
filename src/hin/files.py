"""Opening the files a user names, with one message for each way a path can be wrong, and
writing every file atomically (temporary file, fsync, rename).

A missing path says "does not exist", a folder where a file belongs says "is a directory",
and malformed JSON names the file and the position; each message ends with what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from hin.errors import HINError, UsageError

PathName = TypeVar("PathName", bound="str | Path")   # Mapping is invariant in its keys


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
    caller keeps its own error type (DataError, MetricsError, ...). A UTF-8 byte order mark
    (as Windows editors write) is read past."""
    path = require_file(path, what, fix)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{what} {path} is not valid JSON: {problem}") from problem


def same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file: links and relative paths resolved, existing or not."""
    first, second = Path(first), Path(second)
    if first.exists() and second.exists():
        return first.samefile(second)
    return first.resolve() == second.resolve()


def refuse_overwriting(output: str | Path, inputs: dict[str, str | Path | None], fix: str) -> None:
    """Refuse an output path that is one of a command's `inputs` (by role, e.g. "--results"):
    writing it would replace what the command reads. `fix` says what to give instead."""
    for role, path in inputs.items():
        if path is not None and same_file(output, path):
            raise UsageError(f"{output} is also {role}; writing there would replace it: {fix}")


TEMPORARY_SUFFIX = ".tmp"   # a write in progress is `.NAME.<random>.tmp` beside NAME


def check_writable(path: str | Path, flag: str) -> Path:
    """Refuse, before a command's work, an output `flag` (e.g. "--out") that cannot be written:
    a folder, a path under a file, a folder without write access. A temporary file is made and
    removed beside it, since permission bits say nothing of read-only mounts (or for root)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name (e.g. {path / 'out.json'})")
    blocker = next((folder for folder in path.parents if folder.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UsageError(f"{flag} {path} cannot be written: {blocker} is a file, not a folder; "
                         "give another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX,
                                             dir=path.parent)
    except OSError as error:
        raise UsageError(f"{flag} {path} cannot be written ({error.strerror or error}); give "
                         "another path") from None
    os.close(handle)
    os.unlink(temp_name)
    return path


def _without_temporary(error: OSError, temporary: str, path: Path) -> OSError:
    """The same error naming `path` where it named the temporary file written for it: a user
    never sees a name they did not give."""
    if temporary not in (error.filename, error.filename2):
        return error
    return type(error)(error.errno, error.strerror, str(path))


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove the temporaries that writes of `path` left when they were killed mid-write (call
    it only while nothing else writes `path`, e.g. under the run folder's lock)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*{TEMPORARY_SUFFIX}"):
        stale.unlink(missing_ok=True)

class OutOfSpaceError(HINError):
    """The disk filled up while writing; the file that was there before is untouched."""


def out_of_space(error: BaseException) -> bool:
    """Whether `error` is a full disk (h5py reports it as an OSError naming errno 28 in text)."""
    return isinstance(error, OSError) and (error.errno == errno.ENOSPC
                                           or "No space left on device" in str(error))


def _refuse_full_disk(path: Path, error: BaseException, kept: str) -> None:
    """Raise a full disk as a one-line OutOfSpaceError saying what is `kept`; the caller
    re-raises any other error as it is."""
    if out_of_space(error):
        raise OutOfSpaceError(f"no space left on the device writing {path}; {kept}. "
                              "Free some space and try again") from error


@contextlib.contextmanager
def _complete_temporary(path: Path, mode: str) -> Iterator[IO[Any]]:
    """A temporary file beside `path`, opened by name (so `file.name` is its path), flushed and
    fsynced when the block ends; removed again if the block fails."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(handle)
    try:
        with open(temp_name, mode, encoding=None if "b" in mode else "utf-8") as file:
            yield file
            file.flush()
            os.chmod(file.fileno(), _file_mode(path))
            os.fsync(file.fileno())
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _previous(path: Path) -> str:
    return f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing and rename it onto `path` only when the
    block ends without error (after fsync). A crash, a kill or a full disk therefore leaves
    either the old file or the new one, never a half-written file that looks finished. Every
    file the project writes goes through here (or `write_text`/`write_json`/`write_yaml`/
    `write_together`); `append_line` is the one exception, for logs."""
    path = Path(path)
    temporary = ""
    try:
        with _complete_temporary(path, mode) as file:
            temporary = file.name
            yield file
        os.replace(file.name, path)
    except BaseException as error:
        _refuse_full_disk(path, error, _previous(path))
        if isinstance(error, OSError) and temporary:
            Path(temporary).unlink(missing_ok=True)
            renamed = _without_temporary(error, temporary, path)
            if renamed is not error:
                raise renamed from None
        raise


def write_together(texts: Mapping[PathName, str], remove: Iterable[str | Path] = ()) -> list[Path]:
    """Replace several files that belong together (e.g. captions and their metrics): every new
    text is written and fsynced to a temporary file first, and only then are the `remove`
    paths (stale members of the set) deleted and the temporaries renamed. A full disk or any
    error while writing leaves every old file as it was."""
    done: dict[Path, Path] = {}
    try:
        for name, text in texts.items():
            path = Path(name)
            try:
                with _complete_temporary(path, "w") as file:
                    file.write(text)
            except BaseException as error:
                names = ", ".join(Path(p).name for p in texts)
                _refuse_full_disk(path, error, f"none of {names} was replaced")
                raise
            done[path] = Path(file.name)
    except BaseException:
        for temporary in done.values():
            temporary.unlink(missing_ok=True)
        raise
    for stale in remove:
        Path(stale).unlink(missing_ok=True)
    for path, temporary in done.items():
        os.replace(temporary, path)
    return list(done)


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a newline is added) to a log file. An error while writing (a full
    disk) cuts the file back to its previous length, so no partial line stays behind; only a
    kill mid-write can leave one, which `complete_lines` recognises."""
    path = Path(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(descriptor).st_size
        data = (line + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(descriptor, data):]
        except BaseException as error:
            os.ftruncate(descriptor, size)
            _refuse_full_disk(path, error, "the lines before are intact")
            raise
    finally:
        os.close(descriptor)


def complete_lines(text: str) -> tuple[list[str], str]:
    """(the complete lines of a log's `text`, the cut-off last line or "") : a line is complete
    when a newline ends it."""
    lines = text.split("\n")
    return lines[:-1], lines[-1]


def _file_mode(path: Path) -> int:
    """The mode the file would have if opened plainly: the existing file's, else 0666 less the
    umask (mkstemp's temporaries are 0600, which would hide outputs from other users)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_text(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_write(path) as file:
        file.write(text)
    return Path(path)


def json_text(value: Any, indent: int | None = 2) -> str:
    """`value` as the JSON text every hin file holds: UTF-8 as it is, one trailing newline.
    NaN and infinities are refused: they are not JSON, and other readers reject them."""
    try:
        return json.dumps(value, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as error:
        raise FileFormatError(f"refusing to write JSON holding a value that is not a number "
                              f"({error})") from None


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Replace `path` with `value` as JSON (`json_text`) atomically."""
    return write_text(path, json_text(value, indent))


def write_yaml(path: str | Path, value: Any) -> Path:
    """Replace `path` with `value` as YAML (keys in the given order) atomically."""
    import yaml

    return write_text(path, yaml.safe_dump(value, sort_keys=False))


def sha256(path: str | Path) -> str:
    """Hex digest of a file's bytes: how runs and reports name the checkpoints and data files
    they used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
