"""Training runs (docs/model.md §8): cross-entropy, then self-critical CIDEr-D optimisation.

A run directory holds `config.yaml` (resolved), `log.jsonl` (one JSON object per step and
per epoch), `last.pt` (everything needed to continue: weights, optimiser, position in the
data order, RNG states, best score) and `best.pt` (chosen on validation CIDEr-D only; the
test split is never read here). Checkpoints are atomic; SIGINT/SIGTERM save `last.pt`
before exiting; a non-finite loss stops the run (or skips the batch) and never overwrites
the last good checkpoint. On CPU a resumed run equals the uninterrupted one bit for bit.

A directory holding any run file is an existing run: it is resumed, never started afresh;
a finished run says how to extend it. SCST starts from a checkpoint (`init`), whose path
and sha256 the log and every checkpoint record; the model's settings then come from it.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import tempfile
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hin import checkpoint
from hin.config import ConfigError, DecodingConfig, HINConfig, RunConfig, apply_overrides
from hin.data.coco import load_splits
from hin.data.dataset import Batch, CaptionPairs, ImageReferences, make_loader
from hin.data.familiarity import feature_profile
from hin.data.features import FeatureStore, read_attributes
from hin.data.vocab import Vocabulary, tokenize
from hin.decoding import caption_batches
from hin.devices import autocast, resolve_precision
from hin.errors import HINError
from hin.metrics import (
    CiderDTable,
    JavaNotFoundError,
    cider_d,
    collapse_repeats,
    find_java,
    score_captions,
)
from hin.model import HIN
from hin.training import distributed
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
                 model_keys: Collection[str] | None = None):
        """`model_keys`: the model settings the user gave, which must agree with `init`'s
        (default: those that differ from HINConfig's defaults)."""
        self.context = distributed.setup(config.train.device)
        self.show_progress = progress and self.context.is_main
        self.vocab = Vocabulary.load(config.data.vocabulary)
        init_model = self._init_model(init, config.model, model_keys) if init else None
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
        self.feature_profile = feature_profile(splits["train"].image_ids,
                                               lambda image_id: store[image_id][0])
        self.train_set = (CaptionPairs(splits["train"], store, self.vocab,
                                       data.max_caption_tokens, progress=self.show_progress,
                                       captions_per_image=train.captions_per_image)
                          if train.stage == "xe" else ImageReferences(splits["train"], store))
        self.val_set = ImageReferences(splits["val"], store)
        self.precision = resolve_precision(train.precision, self.context.device)
        self.decoding = DecodingConfig(beam_size=train.beam_size, max_len=train.max_len,
                                       precision=self.precision)
        self.val_references = {image_id: list(image.captions)
                               for image_id, image in splits["val"].images.items()}
        self.val_tokenised = {image_id: [" ".join(tokenize(c)) for c in captions]
                              for image_id, captions in self.val_references.items()}

        torch.manual_seed(train.seed)
        self.model = (init_model or HIN(model_config)).to(self.context.device)
        self.network = (DistributedDataParallel(self.model) if self.context.distributed
                        else self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train.lr,
                                          betas=(train.adam_beta1, train.adam_beta2))
        self.progress = Progress()
        if resume_state is not None:
            self.model.load_state_dict(resume_state["model"])
            self.optimizer.load_state_dict(resume_state["optimizer"])
            self.progress = Progress(**resume_state["progress"])
            restore_rng(resume_state["rng"])
        self.java = self._find_java()
        self.cider_table = self._cider_table(splits["train"]) if train.stage == "scst" else None
        self.log: RunLog | None = None
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(self.config.to_dict(),
                                                                   sort_keys=False))
            self.log = RunLog(self.run_dir, use_tensorboard=train.tensorboard)
        if init:
            self._log({"event": "init", **self.init_record})

    def _init_model(self, path: str | Path, wanted: HINConfig,
                    model_keys: Collection[str] | None) -> HIN:
        model, extra = checkpoint.load(path)
        if ("vocabulary" in extra
                and Vocabulary.from_dict(extra["vocabulary"]).words != self.vocab.words):
            raise TrainingError(f"{path} was trained with another vocabulary than "
                                "data.vocabulary; point data.vocabulary at the one it used")
        if model_keys is None:
            model_keys = [f.name for f in fields(HINConfig)
                          if getattr(wanted, f.name) != getattr(HINConfig(), f.name)]
        conflicts = model_conflicts(wanted, model.config, model_keys)
        if conflicts:
            raise ConfigError(f"the model settings come from --init {path}, but "
                              f"{', '.join(conflicts)} differ from it: drop those model.* "
                              "settings (or train from scratch without --init)")
        return model

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
        """Flush the log and leave the process group."""
        if self.log is not None:
            self.log.close()
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
                                           beam_size=train.beam_size, max_len=train.max_len,
                                           network=self.network, precision=self.precision)
        return loss, {"loss": loss.item(), "reward": rewards.mean().item()}

    # -- validation and checkpoints ----------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Beam search over this rank's share of the validation split; rank 0 scores all.
        CIDEr-D (Java-free, document frequencies of the validation references) selects the
        best checkpoint; the full COCO table is logged when Java is present."""
        train = self.config.train
        self.model.eval()
        indices = list(range(self.context.rank, len(self.val_set), self.context.world_size))
        loader = make_loader(self.val_set, train.val_batch_size, sampler=indices,
                             num_workers=self.config.data.num_workers)
        mine = caption_batches(self.model, (b.to(self.context.device) for b in loader),
                               self.vocab.decode, self.decoding, desc="validating",
                               progress=self.show_progress)
        metrics: dict[str, float] = {}
        if self.context.is_main:
            captions = {}
            for part in distributed.gather_objects(self.context, mine):
                captions.update(part)
            if self.decoding.collapse_repeats:
                captions = {i: collapse_repeats(text) for i, text in captions.items()}
            metrics["CIDEr-D"] = cider_d(captions, {i: self.val_tokenised[i] for i in captions})[0]
            if self.java:
                report = score_captions(captions, {i: self.val_references[i] for i in captions},
                                        spice=False, java=self.java, progress=False)
                metrics.update(report.scores)
        else:
            distributed.gather_objects(self.context, mine)
        self.model.train()
        return distributed.broadcast_object(self.context, metrics)

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
        """Train until the epoch limit, the stopping rule or train.max_steps; -> best.pt."""
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
                        return self.run_dir / BEST
                bar.close()
                self._end_epoch(epoch, lr)
        return self.run_dir / BEST

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


def _prepare_run_dir(run_dir: Path) -> None:
    """Create run_dir, check that files can be written in it, and remove the temporary
    files that a kill during a checkpoint save leaves behind."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise RunDirectoryError(f"cannot write in the run directory {run_dir} "
                                f"({error.strerror or error}): choose another run_dir or make "
                                "it writable") from None
    for name in (LAST, BEST):
        for stale in run_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def start(config: RunConfig, *, init: str | Path | None = None, progress: bool = True,
          model_keys: Collection[str] | None = None) -> Path:
    """A new run in config.run_dir (which must hold no run files) -> best.pt path.
    `init`: start from that checkpoint's weights and model settings (required for SCST);
    `model_keys`: the model settings the user gave (see Trainer)."""
    run_dir = Path(config.run_dir)
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({', '.join(existing)}); continue it with "
            f"`hin train --resume {run_dir}` or choose another run_dir")
    if config.train.stage == "scst" and init is None:
        raise ConfigError("train.stage=scst fine-tunes a trained model: give the cross-entropy "
                          "checkpoint to start from with --init (e.g. --init runs/synth_xe/best.pt)")
    _prepare_run_dir(run_dir)
    return _fit(Trainer(config, init=init, progress=progress, model_keys=model_keys))


def resume(run_dir: str | Path, overrides: list[str] = (), progress: bool = True) -> Path:
    """Continue the run saved in run_dir/last.pt, optionally with `key=value` overrides
    (not of the model's settings); a finished run is refused with how to extend it."""
    run_dir = Path(run_dir)
    last = run_dir / LAST
    if not last.is_file():
        raise RunDirectoryError(f"{run_dir} holds no {LAST} to resume from; start a run there "
                                "with `hin train --config ...`")
    payload = checkpoint.read_hin(last)
    extra = payload["extra"]
    saved = RunConfig.from_dict(extra["config"])
    config = replace(RunConfig.from_dict(apply_overrides(extra["config"], list(overrides))),
                     run_dir=str(run_dir))
    conflicts = model_conflicts(config.model, saved.model, [f.name for f in fields(HINConfig)])
    if conflicts:
        raise ConfigError(f"a resumed run keeps its model: {', '.join(conflicts)} differ from "
                          f"{last}; start a new run for another model")
    state = {"model": payload["model"], "init": extra.get("init"), **extra["training"]}
    state["progress"]["done"] = _stopping_rule_met(config, Progress(**state["progress"]))
    _refuse_finished(run_dir, config, Progress(**state["progress"]))
    _prepare_run_dir(run_dir)
    trainer = Trainer(config, resume_state=state, progress=progress)
    trainer._log({"event": "resume", "step": trainer.progress.step,
                  "epoch": trainer.progress.epoch})
    return _fit(trainer)


def _stopping_rule_met(config: RunConfig, progress: Progress) -> bool:
    """Whether the run stopped early by the rule, judged with the (possibly overridden)
    patience and minimum, after the last finished epoch."""
    train = config.train
    return progress.epoch > 1 and should_stop(progress.epoch - 1, progress.epochs_since_best,
                                              train.patience, train.min_epochs)


def _refuse_finished(run_dir: Path, config: RunConfig, progress: Progress) -> None:
    train = config.train
    if train.max_steps and progress.step >= train.max_steps:
        why = f"reached train.max_steps={train.max_steps} (step {progress.step})"
        extend, other = f"train.max_steps={progress.step + 1000}", "train.max_steps=0: no step limit"
    elif progress.done:
        why = (f"was stopped by the stopping rule after epoch {progress.epoch - 1} "
               f"({progress.epochs_since_best} epochs without a better validation score, "
               f"train.patience={train.patience})")
        extend, other = f"train.patience={train.patience + 5}", "train.patience=0: no early stopping"
    elif progress.epoch > train.epochs:
        why = f"trained all train.epochs={train.epochs} epochs"
        extend, other = f"train.epochs={train.epochs + 5}", "any number of epochs above it"
    else:
        return
    raise RunDirectoryError(f"the run in {run_dir} is finished: it {why}. To train on, resume "
                            f"with a higher limit, e.g. `hin train --resume {run_dir} {extend}` "
                            f"({other})")


def _fit(trainer: Trainer) -> Path:
    try:
        return trainer.fit()
    finally:
        trainer.close()
