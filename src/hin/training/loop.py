"""Training runs (docs/model.md §8): cross-entropy, then self-critical CIDEr-D optimisation.

A run directory holds `config.yaml` (resolved), `log.jsonl` (one JSON object per step and
per epoch), `last.pt` (everything needed to continue: weights, optimiser, position in the
data order, RNG states, best score) and `best.pt` (chosen on validation CIDEr-D only; the
test split is never read here). Checkpoints are atomic; SIGINT/SIGTERM save `last.pt`
before exiting; a non-finite loss stops the run (or skips the batch) and never overwrites
the last good checkpoint. On CPU a resumed run equals the uninterrupted one bit for bit.

Everything checkable (splits, feature widths, vocabulary, one batch of data) is checked by
one preflight before the run directory is created or touched; the directory is then locked
(hin.locks) so that one process at a time trains in it. A directory holding a checkpoint is
an existing run: it is resumed, never started afresh; one whose run saved no checkpoint yet
may be started again. A finished run says how to extend it, and every run ends saying why
it stopped. SCST starts from a checkpoint (`init`), whose path and sha256 the log and every
checkpoint record; the model's settings, the vocabulary and (unless given) the data
settings then come from it.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hin import checkpoint
from hin.config import (
    ConfigError,
    DataConfig,
    HINConfig,
    RunConfig,
    apply_overrides,
    load_yaml,
    upgrade_legacy,
)
from hin.data.coco import Split, load_splits
from hin.data.dataset import Batch, CaptionPairs, ImageReferences, make_loader
from hin.data.errors import DataError
from hin.data.familiarity import feature_profile
from hin.data.features import FeatureStore, read_attributes
from hin.data.vocab import Vocabulary, require_same_words
from hin.devices import autocast, resolve_precision
from hin.errors import HINError
from hin.evaluate import score_split, tokenised_references
from hin.files import complete_lines, write_text, write_yaml
from hin.locks import FolderLock, refuse_if_locked
from hin.metrics import (
    CiderDTable,
    JavaNotFoundError,
    find_java,
)
from hin.model import HIN
from hin.training import distributed, optimizer
from hin.training.runlog import LOG_FILE, RunLog
from hin.training.schedule import lr_factor, should_stop
from hin.training.scst import self_critical_loss
from hin.training.xe import next_token_nll

CONFIG_FILE = "config.yaml"
LAST = "last.pt"
BEST = "best.pt"
CIDER_TABLE = "cider_train.npz"
RUN_FILES = (CONFIG_FILE, LOG_FILE, LAST, BEST)


class TrainingError(HINError, RuntimeError):
    """The run cannot go on (non-finite loss, inconsistent files); says what to do."""


class RunDirectoryError(HINError, ValueError):
    """A run directory that cannot be used as asked: it holds another run, it cannot be
    written, or its run is finished; says what to do instead."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; `last.pt` was saved and the run can be resumed."""


@dataclass
class Progress:
    """Where the run stands; saved in every `last.pt`."""

    epoch: int = 1              # the epoch in progress (1-based)
    batch: int = 0              # global batches already done in this epoch
    step: int = 0               # optimiser steps since the run began
    best_score: float = -math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0
    done: bool = False
    epoch_losses: list[float] = field(default_factory=list)   # so a resumed epoch logs the
                                                                # same mean training loss


def capture_rng() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _numpy_state_to_plain(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
            state["has_gauss"], state["gauss"])


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):   # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._receive)
        return self

    def _receive(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One stage of training over one run directory."""

    def __init__(self, config: RunConfig, *, init: str | Path | None = None,
                 resume_state: dict[str, Any] | None = None, progress: bool = True,
                 model_keys: Collection[str] | None = None,
                 data_keys: Collection[str] | None = None,
                 claim: Callable[[], str | None] | None = None):
        """`model_keys`, `data_keys`: the model and data settings the user gave (default: those
        that differ from the defaults); given model settings must agree with `init`'s, given
        data settings replace `init`'s. `claim` runs once the run directory is locked, before
        anything is written in it: it refuses a directory that changed meanwhile, or returns
        a line to report."""
        self.context = distributed.setup(config.train.device)
        self.show_progress = progress and self.context.is_main
        init_model, init_extra = self._init_model(init, config.model, model_keys) if init else (
            None, {})
        if init_extra.get("config"):
            config = replace(config, data=self._init_data(init, init_extra["config"], config.data,
                                                          data_keys))
        recorded = (resume_state or {}).get("vocabulary") or init_extra.get("vocabulary")
        source = resume_state.get("source", "the run") if resume_state else f"--init {init}"
        self.vocab = self._vocabulary(config.data.vocabulary, recorded, source)
        self.init_record = ({"path": str(init), "sha256": checkpoint.sha256(init)} if init
                            else (resume_state or {}).get("init"))
        model_config = init_model.config if init_model else replace(
            config.model, vocab_size=len(self.vocab))
        self.config = replace(config, model=model_config)
        self.run_dir = Path(self.config.run_dir)
        train, data = self.config.train, self.config.data

        splits = load_splits(data.annotations, ["train", "val"])
        store = FeatureStore(data.grid_features, data.region_features,
                             max_regions=data.max_regions, grid_dim=model_config.grid_dim,
                             region_dim=model_config.region_dim, cache=data.cache_features)
        model_from = (f"--init {init}" if init else source if resume_state else None)
        preflight(self.config, splits, store, model_from)
        self.feature_profile = feature_profile(splits["train"].image_ids,
                                               lambda image_id: store[image_id][0])
        self.train_set = (CaptionPairs(splits["train"], store, self.vocab,
                                       data.max_caption_tokens, progress=self.show_progress,
                                       captions_per_image=train.captions_per_image)
                          if train.stage == "xe" else ImageReferences(splits["train"], store))
        require_one_batch(self.config, len(self.train_set))
        self.val_set = ImageReferences(splits["val"], store)
        self.precision = resolve_precision(train.precision, self.context.device)
        self.val_tokenised = tokenised_references(splits["val"])

        torch.manual_seed(train.seed)
        self.model = (init_model or HIN(model_config)).to(self.context.device)
        self.network = (DistributedDataParallel(self.model) if self.context.distributed
                        else self.model)
        self.optimizer = optimizer.adam(self.model.parameters(), lr=train.lr,
                                        betas=(train.adam_beta1, train.adam_beta2))
        self.progress = Progress()
        if resume_state is not None:
            self.model.load_state_dict(resume_state["model"])
            optimizer.load_state(self.optimizer, resume_state["optimizer"])
            self.progress = Progress(**resume_state["progress"])
            restore_rng(resume_state["rng"])
        self.java = self._find_java()
        self.log: RunLog | None = None
        self.lock: FolderLock | None = None
        self._open_run_dir(claim)
        self.cider_table = self._cider_table(splits["train"]) if train.stage == "scst" else None

    def _open_run_dir(self, claim: Callable[[], str | None] | None) -> None:
        """Everything is checked: create the run directory, lock it, write config.yaml and
        open the log (rank 0). Every rank learns whether that worked, so none waits forever
        for a rank 0 that refused."""
        failure: HINError | None = None
        if self.context.is_main:
            try:
                _prepare_run_dir(self.run_dir)
                self.lock = FolderLock(self.run_dir, "hin train", say=self._say)
                note = claim() if claim else None
                if note:
                    self._say(note)
                _remove_stale_temporaries(self.run_dir)
                write_yaml(self.run_dir / CONFIG_FILE, self.config.to_dict())
                self.log = RunLog(self.run_dir, use_tensorboard=self.config.train.tensorboard)
            except HINError as error:
                failure = error
        refused = distributed.broadcast_object(self.context, None if failure is None
                                               else str(failure))
        if failure is not None:
            self.close()
            raise failure
        if refused is not None:
            self.close()
            raise RunDirectoryError(refused)

    def _init_model(self, path: str | Path, wanted: HINConfig,
                    model_keys: Collection[str] | None) -> tuple[HIN, dict[str, Any]]:
        model, extra = checkpoint.load(path)
        if model_keys is None:
            model_keys = [f.name for f in fields(HINConfig)
                          if getattr(wanted, f.name) != getattr(HINConfig(), f.name)]
        conflicts = model_conflicts(wanted, model.config, model_keys)
        if conflicts:
            raise ConfigError(f"the model settings come from --init {path}, but "
                              f"{', '.join(conflicts)} differ from it: drop those model.* "
                              "settings (or train from scratch without --init)")
        return model, extra

    def _init_data(self, path: str | Path, saved: dict[str, Any], given: DataConfig,
                   data_keys: Collection[str] | None) -> DataConfig:
        """The data settings `init` was trained with, except those the user gave."""
        recorded = DataConfig.from_dict(upgrade_legacy(saved)[0]["data"])
        if data_keys is None:
            data_keys = [f.name for f in fields(DataConfig)
                         if getattr(given, f.name) != getattr(DataConfig(), f.name)]
        kept = {key: getattr(given, key) for key in data_keys
                if getattr(given, key) != getattr(recorded, key)}
        instead = "; given here and used instead: " + ", ".join(
            f"data.{key}={value} (checkpoint: {getattr(recorded, key)})"
            for key, value in sorted(kept.items())) if kept else ""
        self._say(f"data settings from --init {path} (annotations {recorded.annotations}, "
                  f"vocabulary {recorded.vocabulary}){instead}")
        return replace(recorded, **kept)

    def _vocabulary(self, path: str, recorded: dict[str, Any] | None, source: str) -> Vocabulary:
        """The run's vocabulary: the one `source` (the resumed run, the --init checkpoint)
        records, which the file data.vocabulary must equal where it exists; else that file."""
        if recorded is None:
            return Vocabulary.load(path)
        vocab = Vocabulary.from_dict(recorded, source=f"recorded in {source}")
        if not Path(path).exists():
            self._say(f"data.vocabulary {path} does not exist; using the vocabulary {vocab.source}")
            return vocab
        require_same_words(vocab, Vocabulary.load(path),
                           "a run keeps the vocabulary it was trained with: point "
                           "data.vocabulary at that one (or leave it out)")
        return vocab

    def _find_java(self) -> str | None:
        if not self.config.train.val_full_metrics:
            return None
        try:
            return find_java()
        except JavaNotFoundError as error:
            self._say(f"validation: full metric table off ({error}); CIDEr-D is still computed")
            return None

    def _cider_table(self, split: Any) -> CiderDTable:
        """Training-reference document frequencies for the SCST reward, built once."""
        path = self.run_dir / CIDER_TABLE
        if self.context.is_main and not path.is_file():
            self._say(f"building the CIDEr-D table of {len(split.images)} training images")
            path.parent.mkdir(parents=True, exist_ok=True)
            CiderDTable.from_references(split.references()).save(path)
        distributed.broadcast_object(self.context, None)   # others wait for the file
        return CiderDTable.load(path)

    def _say(self, message: str) -> None:
        if self.context.is_main:
            tqdm.write(message)

    def _log(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(record)

    def close(self) -> None:
        """Flush the log, unlock the run directory and leave the process group."""
        if self.log is not None:
            self.log.close()
        if self.lock is not None:
            self.lock.release()
        distributed.teardown(self.context)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.context.device, self.precision)

    # -- steps -------------------------------------------------------------------------

    def _xe_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token NLL summed over non-pad targets, normalised by the global count so
        that averaging gradients over ranks gives exactly the single-process loss. Tokens
        [B, T] (pairs) or [B, K, T] (caption groups: rows of <pad> only add nothing)."""
        with self._autocast():
            total, count = next_token_nll(self.network, batch.grid, batch.region, batch.tokens,
                                          self.vocab.pad_id)
        global_count = distributed.all_reduce_sum(self.context, count.clone())
        loss = total * self.context.world_size / global_count
        return loss, {"loss": loss.item()}   # its mean over ranks: the global per-token NLL

    def _scst_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Beams without gradients, rewards from the training-df CIDEr-D, then one
        teacher-forced pass with gradients over all beams."""
        train = self.config.train

        def reward(beams: torch.Tensor) -> torch.Tensor:
            captions = [self.vocab.decode(ids) for ids in beams.flatten(0, 1).tolist()]
            owners = [image_id for image_id in batch.image_ids for _ in range(beams.shape[1])]
            return torch.from_numpy(self.cider_table.score(captions, owners)).view(beams.shape[:2])

        loss, rewards = self_critical_loss(self.model, batch.grid, batch.region, reward,
                                           beam_size=train.validation.beam_size,
                                           max_len=train.validation.max_len,
                                           network=self.network, precision=self.precision)
        return loss, {"loss": loss.item(), "reward": rewards.mean().item()}

    # -- validation and checkpoints ----------------------------------------------------

    def validate(self) -> dict[str, float]:
        """`hin evaluate` of the validation split (`hin.evaluate.score_split`), each rank
        decoding its share; rank 0 scores all. CIDEr-D (Java-free, document frequencies of
        the validation references) selects the best checkpoint; the full COCO table is
        logged when Java is present."""
        train = self.config.train
        self.model.eval()
        scores = score_split([self.model], self.val_set, self.vocab, train.validation,
                             batch_size=train.val_batch_size,
                             num_workers=self.config.data.num_workers, java=self.java,
                             progress=self.show_progress,
                             share=(self.context.rank, self.context.world_size),
                             gather=lambda mine: distributed.gather_objects(self.context, mine),
                             tokenised=self.val_tokenised)
        self.model.train()
        return distributed.broadcast_object(self.context, scores.metrics() if scores else {})

    def _extra(self) -> dict[str, Any]:
        """Stored in every checkpoint: what `hin evaluate` and `hin caption` need to use it."""
        data = self.config.data
        init = {"init": self.init_record} if self.init_record else {}
        return {"config": self.config.to_dict(), "vocabulary": self.vocab.to_dict(),
                "features": {"grid": read_attributes(data.grid_features),
                             "region": read_attributes(data.region_features)},
                "feature_profile": self.feature_profile, **init}

    def save_last(self) -> None:
        if self.context.is_main:
            checkpoint.save(self.run_dir / LAST, self.model, **self._extra(), training={
                "optimizer": self.optimizer.state_dict(), "progress": asdict(self.progress),
                "rng": capture_rng()})

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.context.is_main:
            checkpoint.save(self.run_dir / BEST, self.model, **self._extra(),
                            validation=metrics, epoch=self.progress.epoch)

    # -- the loop ----------------------------------------------------------------------

    def fit(self) -> Path:
        """Train until the epoch limit, the stopping rule or train.max_steps; -> best.pt.
        The last line says which of them ended the run."""
        self._train()
        finished = finished_because(self.config, self.progress)
        if finished is not None:
            why, _, _ = finished
            self._say(f"the run in {self.run_dir} stopped: it {why}")
        return self.run_dir / BEST

    def _train(self) -> None:
        train = self.config.train
        step_loss = self._xe_loss if train.stage == "xe" else self._scst_loss
        self.model.train()
        with _StopSignals() as stop:
            while not self.progress.done and self.progress.epoch <= train.epochs:
                epoch = self.progress.epoch
                lr = self._set_learning_rate(epoch)
                bar = self._epoch_batches(epoch)
                for batch in bar:
                    started = time.perf_counter()
                    values = self._optimise(step_loss, batch)
                    if values is None:      # a skipped non-finite batch
                        continue
                    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
                    self._log_step(epoch, lr, values, started)
                    if self._checkpoint_or_stop(epoch, stop):
                        return
                bar.close()
                self._end_epoch(epoch, lr)

    def _set_learning_rate(self, epoch: int) -> float:
        """The stage's schedule for `epoch`, set on the optimiser."""
        train = self.config.train
        lr = train.lr * lr_factor(train.stage, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _epoch_batches(self, epoch: int) -> tqdm:
        """This rank's batches of `epoch` from where the run stands, behind a progress bar."""
        train = self.config.train
        group = train.captions_per_image if train.stage == "xe" else 1
        items = train.batch_size // group   # pairs, caption groups or (SCST) images
        order = distributed.EpochOrder(len(self.train_set), items, train.seed,
                                       epoch, self.context, self.progress.batch)
        loader = make_loader(self.train_set, items // self.context.world_size,
                             sampler=order, num_workers=self.config.data.num_workers,
                             seed=train.seed + epoch)
        return tqdm(loader, desc=f"{train.stage} epoch {epoch}", unit="batch",
                    initial=self.progress.batch, total=order.batches,
                    disable=not self.show_progress)

    def _optimise(self, step_loss: Any, batch: Batch) -> dict[str, float] | None:
        """One optimiser step -> the step's logged numbers; None when the batch was skipped
        for a non-finite loss (train.nonfinite=skip; `stop` raises)."""
        loss, values = step_loss(batch.to(self.context.device))
        if not self._finite_everywhere(loss):
            self._nonfinite(loss)
            return None
        values = self._mean_over_ranks(values)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.progress.batch += 1
        self.progress.step += 1
        self.progress.epoch_losses.append(values["loss"])
        return values

    def _log_step(self, epoch: int, lr: float, values: dict[str, float], started: float) -> None:
        if self.progress.step % self.config.train.log_every == 0:
            self._log({"event": "step", "stage": self.config.train.stage, "epoch": epoch,
                       "step": self.progress.step, "lr": lr,
                       "seconds": time.perf_counter() - started, **values})

    def _checkpoint_or_stop(self, epoch: int, stop: _StopSignals) -> bool:
        """Save `last.pt` when due; after a signal raise TrainingInterrupted; -> True when
        train.max_steps is reached (saved)."""
        train = self.config.train
        if train.checkpoint_every and self.progress.step % train.checkpoint_every == 0:
            self.save_last()
        if self._stop_requested(stop):
            self.save_last()
            self._log({"event": "stop", "reason": "signal", "step": self.progress.step})
            raise TrainingInterrupted(
                f"interrupted at epoch {epoch}, step {self.progress.step}; saved "
                f"{self.run_dir / LAST}; continue with `hin train --resume {self.run_dir}`")
        if train.max_steps and self.progress.step >= train.max_steps:
            self.save_last()
            self._log({"event": "stop", "reason": "max_steps", "step": self.progress.step})
            return True
        return False

    def _stop_requested(self, stop: _StopSignals) -> bool:
        return self._any_rank(stop.received is not None)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether every rank's loss is finite: ranks must skip or stop together, or the
        others would wait forever in the gradient all-reduce."""
        return not self._any_rank(not bool(torch.isfinite(loss)))

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """The step's logged numbers averaged over ranks (equal shares of the global batch),
        so the log describes the whole batch, not rank 0's part of it."""
        if not self.context.distributed:
            return values
        local = torch.tensor(list(values.values()), dtype=torch.float64, device=self.context.device)
        total = distributed.all_reduce_sum(self.context, local)
        return dict(zip(values, (total / self.context.world_size).tolist()))

    def _any_rank(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.context.device)
        return bool(distributed.all_reduce_sum(self.context, value).item())

    def _nonfinite(self, loss: torch.Tensor) -> None:
        value = loss.item()
        where = f"step {self.progress.step + 1} (epoch {self.progress.epoch}, batch {self.progress.batch + 1})"
        rank = f" on rank {self.context.rank}" if self.context.distributed else ""
        self._log({"event": "nonfinite", "step": self.progress.step + 1, "loss": value,
                   "policy": self.config.train.nonfinite})
        if self.config.train.nonfinite == "stop":
            last = self.run_dir / LAST
            kept = (f"the last good checkpoint is {last} (not overwritten)" if last.is_file()
                    else "no checkpoint was saved before it (train.checkpoint_every=N saves "
                         "one every N steps)")
            raise TrainingError(
                f"non-finite loss ({value}) at {where}{rank}; {kept}. Lower train.lr, or set "
                "train.nonfinite=skip to skip such batches")
        self._say(f"skipping a batch with non-finite loss at {where}")
        self.progress.batch += 1

    def _end_epoch(self, epoch: int, lr: float) -> None:
        train = self.config.train
        losses = self.progress.epoch_losses
        metrics = self.validate()
        score = metrics["CIDEr-D"]
        improved = score > self.progress.best_score
        if improved:
            self.progress.best_score, self.progress.best_epoch = score, epoch
            self.progress.epochs_since_best = 0
        else:
            self.progress.epochs_since_best += 1
        self._say(f"epoch {epoch}: validation " + ", ".join(
            f"{name} {100 * value:.1f}" for name, value in metrics.items())
            + (" (best)" if improved else f" (best {100 * self.progress.best_score:.1f} at "
                                          f"epoch {self.progress.best_epoch})"))
        self._log({"event": "epoch", "stage": train.stage, "epoch": epoch,
                   "step": self.progress.step, "lr": lr,
                   "train_loss": float(np.mean(losses)) if losses else None,
                   "val": metrics, "best": improved})
        if improved:
            self._save_best(metrics)
        self.progress.done = should_stop(epoch, self.progress.epochs_since_best, train.patience,
                                         train.min_epochs)
        self.progress.epoch += 1
        self.progress.batch = 0
        self.progress.epoch_losses = []
        self.save_last()


def model_conflicts(wanted: HINConfig, actual: HINConfig, keys: Collection[str]) -> list[str]:
    """`model.key=wanted (checkpoint: actual)` for each of `keys` whose values differ; the
    vocabulary size is never one of them (it comes from the vocabulary)."""
    return [f"model.{key}={getattr(wanted, key)!r} (checkpoint: {getattr(actual, key)!r})"
            for key in sorted(keys) if key != "vocab_size"
            and getattr(wanted, key) != getattr(actual, key)]


def preflight(config: RunConfig, splits: dict[str, Split], store: FeatureStore,
              model_from: str | None) -> None:
    """What every training entry (start, resume, SCST, the demo) checks before the run
    directory is created: both splits hold images, and the feature files' widths are the
    model's. `model_from`: where the model's settings come from (None: from config.model)."""
    data = config.data
    for name, split in splits.items():
        if not split.images:
            raise DataError(f"the {name} split of {data.annotations} holds no images; training "
                            "needs training and validation images: check each image's split "
                            "(train, restval, val, test) in the annotations")
    grid, region = store.widths(next(iter(splits["train"].images)))
    for key, width, path in (("grid_dim", grid, data.grid_features),
                             ("region_dim", region, data.region_features)):
        wanted = getattr(config.model, key)
        if width != wanted:
            fix = (f"set model.{key}={width}" if model_from is None else
                   f"the model (from {model_from}) needs features made like those it was "
                   "trained on")
            raise ConfigError(f"{path} holds {width}-wide features but model.{key}={wanted}: "
                              f"{fix}")


def require_one_batch(config: RunConfig, items: int) -> None:
    """Refuse a training split smaller than one batch: every epoch would have no step."""
    train = config.train
    if train.stage == "scst":
        have, needed = f"{items} images", train.batch_size
        unit = "SCST batches count images"
    elif train.captions_per_image == 1:
        have, needed, unit = f"{items} captions", train.batch_size, "batches count captions"
    else:
        have = f"{items} groups of up to {train.captions_per_image} captions"
        needed = train.batch_size // train.captions_per_image
        unit = f"a batch holds {needed} groups"
    if items < needed:
        largest = items * (train.batch_size // needed)
        raise ConfigError(f"the training split of {config.data.annotations} has {have}, fewer "
                          f"than one batch of train.batch_size={train.batch_size} ({unit}): "
                          f"lower train.batch_size to at most {largest}")


def _prepare_run_dir(run_dir: Path) -> None:
    """Create run_dir and check that files can be written in it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise RunDirectoryError(f"cannot write in the run directory {run_dir} "
                                f"({error.strerror or error}): choose another run_dir or make "
                                "it writable") from None


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Remove what a kill during a save leaves behind (the run directory is locked)."""
    for name in (LAST, BEST, CONFIG_FILE, CIDER_TABLE):
        for stale in run_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _restartable(run_dir: Path) -> list[str]:
    """The run files in run_dir when none of them is a checkpoint (a run that stopped before
    saving one: it may be started again); a run with a checkpoint is refused."""
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if LAST in existing or BEST in existing:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({', '.join(existing)}); continue it with "
            f"`hin train --resume {run_dir}` or choose another run_dir")
    return existing


def start(config: RunConfig, *, init: str | Path | None = None, progress: bool = True,
          model_keys: Collection[str] | None = None,
          data_keys: Collection[str] | None = None) -> Path:
    """A new run in config.run_dir -> best.pt path. The directory must hold no checkpoint;
    one holding a run that saved none yet is started again (said so, and logged).
    `init`: start from that checkpoint's weights, model and data settings (required for
    SCST); `model_keys`, `data_keys`: the settings the user gave (see Trainer)."""
    run_dir = Path(config.run_dir)
    if config.train.stage == "scst" and init is None:
        raise ConfigError("train.stage=scst fine-tunes a trained model: give the cross-entropy "
                          "checkpoint to start from with --init (e.g. --init runs/synth_xe/best.pt)")
    refuse_if_locked(run_dir)
    earlier = _restartable(run_dir)

    def claim() -> str | None:
        found = _restartable(run_dir)
        return (f"{run_dir} holds a run that saved no checkpoint ({', '.join(found)}): "
                "starting it again from the beginning" if found else None)

    trainer = Trainer(config, init=init, progress=progress, model_keys=model_keys,
                      data_keys=data_keys, claim=claim)
    if earlier:
        trainer._log({"event": "restart", "step": 0})
    if init:
        trainer._log({"event": "init", **trainer.init_record})
    return _fit(trainer)


def resume(run_dir: str | Path, overrides: list[str] = (), progress: bool = True) -> Path:
    """Continue the run saved in run_dir/last.pt, optionally with `key=value` overrides
    (not of the model's settings, nor of the vocabulary, nor of how the epoch is cut into
    batches mid-epoch); a finished run is refused with how to extend it."""
    run_dir = Path(run_dir)
    last = run_dir / LAST
    if not last.is_file():
        again = (f" (it holds a run that saved no checkpoint yet: `hin train --config CONFIG "
                 f"run_dir={run_dir}` starts it again)" if (run_dir / CONFIG_FILE).exists() else "")
        raise RunDirectoryError(f"{run_dir} holds no {LAST} to resume from; start a run there "
                                f"with `hin train --config ...`{again}")
    refuse_if_locked(run_dir)
    read_at = last.stat()
    payload = checkpoint.read_hin(last)
    extra = payload["extra"]
    values, notes = upgrade_legacy(extra["config"])
    saved = RunConfig.from_dict(values)
    config = replace(RunConfig.from_dict(apply_overrides(values, list(overrides))),
                     run_dir=str(run_dir))
    conflicts = model_conflicts(config.model, saved.model, [f.name for f in fields(HINConfig)])
    if conflicts:
        raise ConfigError(f"a resumed run keeps its model: {', '.join(conflicts)} differ from "
                          f"{last}; start a new run for another model")
    state = {"model": payload["model"], "init": extra.get("init"), "source": str(last),
             "vocabulary": extra.get("vocabulary"), **extra["training"]}
    progress_now = Progress(**state["progress"])
    _refuse_edited_config(run_dir, saved, config, list(overrides))
    _refuse_new_epoch_order(run_dir, saved, config, progress_now)
    state["progress"]["done"] = _stopping_rule_met(config, progress_now)
    _refuse_finished(run_dir, config, Progress(**state["progress"]))

    def claim() -> str | None:
        if last.stat().st_mtime_ns != read_at.st_mtime_ns:
            raise RunDirectoryError(f"{last} changed while this resume was loading (another "
                                    "process trained meanwhile); resume again")
        said = [f"{last}: {note}" for note in notes] + [repair_log(run_dir) or ""]
        return "\n".join(line for line in said if line) or None

    trainer = Trainer(config, resume_state=state, progress=progress, claim=claim)
    trainer._log({"event": "resume", "step": trainer.progress.step,
                  "epoch": trainer.progress.epoch})
    return _fit(trainer)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _refuse_edited_config(run_dir: Path, saved: RunConfig, config: RunConfig,
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
        apply = " ".join([*overrides, *(f"{key}={value}" for key, value in edited.items())])
        raise RunDirectoryError(
            f"{path} was edited ({first}: {edited[first]!r} there, {recorded[first]!r} in "
            f"{run_dir / LAST}); a resumed run takes its settings from {LAST} (and rewrites "
            f"{CONFIG_FILE}). To use the edit: `hin train --resume {run_dir} {apply}`; to drop "
            f"it, delete {path}")


EPOCH_ORDER_KEYS = ("batch_size", "captions_per_image", "seed")


def _refuse_new_epoch_order(run_dir: Path, saved: RunConfig, config: RunConfig,
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
            f"epoch first (`hin train --resume {run_dir} train.epochs={progress.epoch}`), then "
            f"resume with train.{key}={getattr(config.train, key)} and train.epochs above "
            f"{progress.epoch}")


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


def _stopping_rule_met(config: RunConfig, progress: Progress) -> bool:
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


def _refuse_finished(run_dir: Path, config: RunConfig, progress: Progress) -> None:
    finished = finished_because(config, progress)
    if finished is None:
        return
    why, extend, other = finished
    raise RunDirectoryError(f"the run in {run_dir} is finished: it {why}. To train on, resume "
                            f"with a higher limit, e.g. `hin train --resume {run_dir} {extend}` "
                            f"({other})")


def _fit(trainer: Trainer) -> Path:
    try:
        return trainer.fit()
    finally:
        trainer.close()
