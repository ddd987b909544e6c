"""The run directory: its files, opening it for a run (locked, config.yaml written, log
open), and the checks that refuse a directory, a resume or a finished run with what to do
instead."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from shlex import quote
from typing import Any

from tqdm import tqdm

from hin.config import ConfigError, RunConfig, load_yaml, upgrade_legacy
from hin.data.errors import DataError
from hin.data.identity import changes
from hin.errors import HINError
from hin.files import complete_lines, write_text, write_yaml
from hin.files import remove_stale_temporaries as remove_temporaries_of
from hin.locks import FolderLock
from hin.training import distributed
from hin.training.runlog import LOG_FILE, RunLog
from hin.training.schedule import should_stop
from hin.training.state import Progress

CONFIG_FILE = "config.yaml"
LAST = "last.pt"
BEST = "best.pt"
CIDER_TABLE = "cider_train.npz"
DATA_FILE = "data.json"      # what the run's data is (hin.data.identity), as last written
RUN_FILES = (CONFIG_FILE, LOG_FILE, LAST, BEST)


class RunDirectoryError(HINError, ValueError):
    """A run directory that cannot be used as asked: it holds another run, it cannot be
    written, or its run is finished; says what to do instead."""


def announce(context: distributed.Context, message: str) -> None:
    """A line for the user, from rank 0 only (beside the progress bars)."""
    if context.is_main:
        tqdm.write(message)


class RunFolder:
    """The open run directory of one process: rank 0 holds its lock and its log; `log` and
    `say` do nothing on the other ranks."""

    def __init__(self, run_dir: Path, context: distributed.Context) -> None:
        self.run_dir = run_dir
        self.context = context
        self.log_file: RunLog | None = None
        self.lock: FolderLock | None = None

    @classmethod
    def open(cls, config: RunConfig, context: distributed.Context,
             claim: Callable[[], str | None] | None = None) -> RunFolder:
        """Everything is checked: create the run directory, lock it, write config.yaml and
        open the log (rank 0). Every rank learns whether that worked, so none waits forever
        for a rank 0 that refused. `claim` runs once the directory is locked, before anything
        is written in it: it refuses a directory that changed meanwhile, or returns a line to
        report."""
        folder = cls(Path(config.run_dir), context)
        failure: HINError | None = None
        if context.is_main:
            try:
                prepare_run_dir(folder.run_dir)
                folder.lock = FolderLock(folder.run_dir, "hin train", say=folder.say)
                note = claim() if claim else None
                if note:
                    folder.say(note)
                remove_stale_temporaries(folder.run_dir)
                write_yaml(folder.run_dir / CONFIG_FILE, config.to_dict())
                folder.log_file = RunLog(folder.run_dir, use_tensorboard=config.train.tensorboard)
            except HINError as error:
                failure = error
        refused = distributed.broadcast_object(context, None if failure is None else str(failure))
        if failure is not None:
            folder.close()
            raise failure
        if refused is not None:
            folder.close()
            raise RunDirectoryError(refused)
        return folder

    def say(self, message: str) -> None:
        announce(self.context, message)

    def log(self, record: dict[str, Any]) -> None:
        if self.log_file is not None:
            self.log_file.write(record)

    def close(self) -> None:
        """Flush the log and unlock the run directory."""
        if self.log_file is not None:
            self.log_file.close()
        if self.lock is not None:
            self.lock.release()


def prepare_run_dir(run_dir: Path) -> None:
    """Create run_dir and check that files can be written in it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise RunDirectoryError(f"cannot write in the run directory {run_dir} "
                                f"({error.strerror or error}): choose another run_dir or make "
                                "it writable") from None


def remove_stale_temporaries(run_dir: Path) -> None:
    """Remove what a kill during a save leaves behind (the run directory is locked)."""
    for name in (LAST, BEST, CONFIG_FILE, CIDER_TABLE, DATA_FILE):
        remove_temporaries_of(run_dir / name)


def restartable(run_dir: Path) -> list[str]:
    """The run files in run_dir when none of them is a checkpoint (a run that stopped before
    saving one: it may be started again); a run with a checkpoint is refused."""
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if LAST in existing or BEST in existing:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({', '.join(existing)}); continue it with "
            f"`hin train --resume {quote(str(run_dir))}` or choose another run_dir")
    return existing


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def refuse_edited_config(run_dir: Path, saved: RunConfig, config: RunConfig,
                          overrides: list[str]) -> None:
    """A config.yaml edited by hand is not read (last.pt holds the run's settings) and would
    be rewritten: refuse, saying how to apply the edit (overrides) or drop it. Values the
    overrides also give are not an edit that would be lost."""
    path = run_dir / CONFIG_FILE
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return
    written = _flat(upgrade_legacy(load_yaml(path))[0])
    recorded, resolved = _flat(saved.to_dict()), _flat(config.to_dict())
    edited = {key: value for key, value in written.items()
              if key != "run_dir" and key in resolved and recorded[key] != value
              and resolved[key] != value}
    if edited:
        first = next(iter(edited))
        apply = " ".join(quote(text) for text in [*overrides, *(f"{key}={value}"
                                                              for key, value in edited.items())])
        raise RunDirectoryError(
            f"{path} was edited ({first}: {edited[first]!r} there, {recorded[first]!r} in "
            f"{run_dir / LAST}); a resumed run takes its settings from {LAST} (and rewrites "
            f"{CONFIG_FILE}). To use the edit: `hin train --resume {quote(str(run_dir))} {apply}`; to drop "
            f"it, delete {path}")


EPOCH_ORDER_KEYS = ("batch_size", "captions_per_image", "seed")


def refuse_new_epoch_order(run_dir: Path, saved: RunConfig, config: RunConfig,
                            progress: Progress) -> None:
    """Mid-epoch, the rest of the epoch follows the order the run began it with: a setting
    that cuts it otherwise would skip or repeat part of the data. At a boundary, any is fine."""
    if progress.batch == 0:
        return
    changed = [key for key in EPOCH_ORDER_KEYS
               if getattr(saved.train, key) != getattr(config.train, key)]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"train.{key}={getattr(config.train, key)} differs from the run's "
            f"{getattr(saved.train, key)} in the middle of epoch {progress.epoch} "
            f"({progress.batch} batches done), whose order was cut with the run's: finish the "
            f"epoch first (`hin train --resume {quote(str(run_dir))} train.epochs={progress.epoch}`), then "
            f"resume with train.{key}={getattr(config.train, key)} and train.epochs above "
            f"{progress.epoch}")


def refuse_changed_data(source: str, recorded: dict[str, Any] | None,
                        current: dict[str, Any], progress: Progress, accept: bool,
                        say: Callable[[str], None]) -> None:
    """A resumed run trains on the data it was made from: a difference from what `source`
    records is refused, naming each file and what changed. `accept` (--accept-data-change)
    takes the new data, at an epoch boundary only: mid-epoch, the rest of the epoch's order
    was cut from the old data."""
    if recorded is None:
        say(f"{source} records no data identity (an older hin): the data cannot be compared")
        return
    found = changes(recorded, current)
    if not found:
        return
    what = f"the data changed since {source} was saved: {'; '.join(found)}"
    if not accept:
        raise DataError(f"{what}. Resume with the data the run was made with, or add "
                        "--accept-data-change to train on with this data from an epoch boundary")
    if progress.batch:
        raise DataError(f"{what}. --accept-data-change applies at an epoch boundary only, and "
                        f"the run stopped in epoch {progress.epoch} after {progress.batch} "
                        "batches: finish that epoch with the data it was cut from, then accept")
    say(f"--accept-data-change: {what}; training on with this data from epoch {progress.epoch}")


def repair_log(run_dir: Path) -> str | None:
    """Drop a cut-off last line of run_dir/log.jsonl (a kill while it was being written)
    -> a line saying so, or None when the log is whole."""
    path = run_dir / LOG_FILE
    if not path.is_file():
        return None
    lines, partial = complete_lines(path.read_text(encoding="utf-8", errors="replace"))
    if not partial:
        return None
    write_text(path, "".join(f"{line}\n" for line in lines))
    return (f"{path}: dropped a cut-off last line ({len(partial)} characters) left by an "
            "interrupted write")


def stopping_rule_met(config: RunConfig, progress: Progress) -> bool:
    """Whether the run stopped early by the rule, judged with the (possibly overridden)
    patience and minimum, after the last finished epoch."""
    train = config.train
    return progress.epoch > 1 and should_stop(progress.epoch - 1, progress.epochs_since_best,
                                              train.patience, train.min_epochs)


def finished_because(config: RunConfig, progress: Progress) -> tuple[str, str, str] | None:
    """Why the run is finished -> (why, a higher limit that extends it, what the other
    value does), or None while it is not finished."""
    train = config.train
    if train.max_steps and progress.step >= train.max_steps:
        return (f"reached train.max_steps={train.max_steps} (step {progress.step})",
                f"train.max_steps={progress.step + 1000}", "train.max_steps=0: no step limit")
    if progress.done:
        return (f"was stopped by the stopping rule after epoch {progress.epoch - 1} "
                f"({progress.epochs_since_best} epochs without a better validation score, "
                f"train.patience={train.patience})",
                f"train.patience={train.patience + 5}", "train.patience=0: no early stopping")
    if progress.epoch > train.epochs:
        return (f"trained all train.epochs={train.epochs} epochs",
                f"train.epochs={train.epochs + 5}", "any number of epochs above it")
    return None


def refuse_finished(run_dir: Path, config: RunConfig, progress: Progress) -> None:
    finished = finished_because(config, progress)
    if finished is None:
        return
    why, extend, other = finished
    raise RunDirectoryError(f"the run in {run_dir} is finished: it {why}. To train on, resume "
                            f"with a higher limit, e.g. `hin train --resume {quote(str(run_dir))} {extend}` "
                            f"({other})")
