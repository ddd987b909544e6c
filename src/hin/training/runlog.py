"""The training log of a run directory: one JSON object per line in `log.jsonl`, mirrored
to TensorBoard when the `tensorboard` package is installed.

Records are plain dicts with an `event` key ("step", "epoch", "resume", "restart", "init",
"stop", "nonfinite"). Appending is the one kind of write that is not atomic; a kill mid-line
leaves a cut-off last line, which readers skip and a resume removes. This module only
appends and reads records; it never decides what a run does.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any, Protocol

from hin.errors import UsageError, pip_install
from hin.files import append_line, complete_lines, json_text

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


class ScalarWriter(Protocol):
    """What the log needs of a TensorBoard `SummaryWriter`."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def tensorboard_writer(run_dir: Path) -> ScalarWriter | None:
    """A SummaryWriter into run_dir/tensorboard, or None when tensorboard is not installed.
    A broken installation only costs the mirror (with a warning): log.jsonl is the record."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        warnings.warn(f"TensorBoard logging is off: tensorboard is installed but does not "
                      f"import ({error}); reinstall it with {pip_install('tensorboard')}, or "
                      "set train.tensorboard=false", stacklevel=2)
        return None
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a step or epoch record as TensorBoard tags, e.g. `xe/loss`,
    `xe/val/CIDEr-D`; nested dicts are flattened, non-numbers left out."""
    prefix = f"{record.get('stage', 'run')}/"
    found: dict[str, float] = {}

    def walk(values: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            if key in ("event", "stage", "step", "epoch", "best"):
                continue
            if isinstance(value, dict):
                walk(value, f"{path}{key}/")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                found[f"{path}{key}"] = float(value)

    walk(record, prefix)
    return found


class RunLog:
    """Appends records to run_dir/log.jsonl (and TensorBoard). Only the writing process
    (rank 0) should hold one; `writer` defaults to TensorBoard when installed."""

    def __init__(self, run_dir: str | Path, writer: ScalarWriter | None = None,
                 use_tensorboard: bool = True):
        self.path = Path(run_dir) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = writer or (tensorboard_writer(self.path.parent) if use_tensorboard else None)

    def write(self, record: dict[str, Any]) -> None:
        append_line(self.path, json_text(record, indent=None).rstrip("\n"))
        if self.writer is not None and record["event"] in ("step", "epoch"):
            for tag, value in scalars(record).items():
                self.writer.add_scalar(tag, value, record["step"])
            if record["event"] == "epoch":
                self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of run_dir/log.jsonl, in order; a last line still being written (or cut
    off by a kill; `hin train --resume` removes it) is not a record yet."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a `hin train` run "
                                "directory (it has config.yaml and log.jsonl)?")
    records = []
    lines, _ = complete_lines(path.read_text(encoding="utf-8"))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise UsageError(f"{path} line {number} is not JSON ({error}); the file was "
                             "edited or cut short — delete that line and retry") from error
    return records
