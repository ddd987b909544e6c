"""The training loop of one stage (docs/model.md §8): cross-entropy, or self-critical
CIDEr-D optimisation, over an opened run directory, with everything it needs built and
checked beforehand by hin.training.run (start, resume) and passed in.

Each epoch validates (beam search, CIDEr-D selects `best.pt`; the test split is never read
here) and saves `last.pt` (everything needed to continue: weights, optimiser, position in
the data order, RNG states, best score). Checkpoints are atomic; SIGINT/SIGTERM save
`last.pt` before exiting; a non-finite loss stops the run (or skips the batch) and never
overwrites the last good checkpoint. On CPU a resumed run equals the uninterrupted one bit
for bit.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from shlex import quote
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hin import checkpoint
from hin.checkpoint.record import TRAINED, CheckpointRecord, training_features
from hin.config import RunConfig
from hin.data.dataset import Batch, CaptionPairs, ImageReferences, make_loader
from hin.data.vocab import Vocabulary
from hin.devices import autocast
from hin.errors import HINError
from hin.evaluate import score_split
from hin.files import OutOfSpaceError
from hin.metrics import CiderDTable
from hin.model import HIN
from hin.training import distributed
from hin.training.rundir import BEST, LAST, RunFolder, finished_because
from hin.training.schedule import lr_factor, should_stop
from hin.training.scst import SelfCritical, self_critical_loss
from hin.training.state import Progress, capture_rng
from hin.training.xe import next_token_nll


class TrainingError(HINError, RuntimeError):
    """The run cannot go on (non-finite loss, inconsistent files); says what to do."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; `last.pt` was saved and the run can be resumed."""


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


@dataclass(frozen=True)
class TrainingData:
    """The datasets of a run and what validation and checkpoints need from the splits."""

    train_set: CaptionPairs | ImageReferences
    val_set: ImageReferences
    val_tokenised: dict[int, list[str]]       # tokenised, for CIDEr-D (hin.evaluate)
    feature_profile: dict[str, Any] | None    # recorded in checkpoints (hin.data.familiarity)
    identity: dict[str, Any]                  # recorded in checkpoints (hin.data.identity)


class Trainer:
    """One stage of training over one opened run directory. `network` is what the forward
    pass runs (the model, the SCST `critic`, or its DistributedDataParallel wrapper); the
    model, optimiser and `progress` are those of a new run or restored from `last.pt`;
    `precision` is train.precision resolved for the device."""

    def __init__(self, config: RunConfig, context: distributed.Context, *, model: HIN,
                 network: nn.Module, critic: SelfCritical | None, optimizer: torch.optim.Optimizer,
                 progress: Progress, data: TrainingData, vocab: Vocabulary, folder: RunFolder,
                 precision: str, java: str | None, cider_table: CiderDTable | None,
                 init_record: dict[str, Any] | None, show_progress: bool) -> None:
        self.config, self.context = config, context
        self.model, self.network, self.critic, self.optimizer = model, network, critic, optimizer
        self.progress, self.data, self.vocab = progress, data, vocab
        self.folder, self.run_dir = folder, folder.run_dir
        self.java, self.cider_table, self.init_record = java, cider_table, init_record
        self.show_progress = show_progress
        self.precision = precision
        self.epoch_batches = 0      # batches of the epoch in progress (all ranks)

    def close(self) -> None:
        """Flush the log, unlock the run directory and leave the process group."""
        self.folder.close()
        distributed.teardown(self.context)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.context.device, self.precision)

    # -- steps -------------------------------------------------------------------------

    def _xe_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token NLL summed over non-pad targets, normalised by the global count so
        that averaging gradients over ranks gives exactly the single-process loss. Tokens
        [B, T] (pairs) or [B, K, T] (caption groups: rows of <pad> only add nothing)."""
        if batch.tokens is None:
            raise TrainingError("cross-entropy training needs captions: the training set holds images only")
        with self._autocast():
            total, count = next_token_nll(self.network, batch.grid, batch.region, batch.tokens,
                                          self.vocab.pad_id)
        global_count = distributed.all_reduce_sum(self.context, count.clone())
        loss = total * self.context.world_size / global_count
        return loss, {"loss": loss.item()}   # its mean over ranks: the global per-token NLL

    def _scst_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Beams without gradients, rewards from the training-df CIDEr-D, then one
        teacher-forced pass with gradients over all beams."""
        critic, table = self.critic, self.cider_table
        if critic is None or table is None:
            raise TrainingError("an SCST step needs the critic and the training CIDEr-D table; "
                                "hin.training.run.build_trainer makes both for train.stage=scst")

        def reward(beams: torch.Tensor) -> torch.Tensor:
            captions = [self.vocab.decode(ids) for ids in beams.flatten(0, 1).tolist()]
            owners = [image_id for image_id in batch.image_ids for _ in range(beams.shape[1])]
            return torch.from_numpy(table.score(captions, owners)).view(beams.shape[:2])

        loss, rewards = self_critical_loss(critic, batch.grid, batch.region, reward,
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
        scores = score_split([self.model], self.data.val_set, self.vocab, train.validation,
                             batch_size=train.val_batch_size,
                             num_workers=self.config.data.num_workers, java=self.java,
                             progress=self.show_progress,
                             share=(self.context.rank, self.context.world_size),
                             gather=lambda mine: distributed.gather_objects(self.context, mine),
                             tokenised=self.data.val_tokenised)
        self.model.train()
        return distributed.broadcast_object(self.context, scores.metrics() if scores else {})

    def _record(self, **entries: Any) -> CheckpointRecord:
        """Stored in every checkpoint: what `hin evaluate` and `hin caption` need to use it,
        the extractors and layout of the features it was trained on, and `entries`."""
        data = self.config.data
        features, layout = training_features(data.grid_features, data.region_features)
        return CheckpointRecord(origin=TRAINED, config=self.config.to_dict(),
                                vocabulary=self.vocab.to_dict(), features=features, layout=layout,
                                feature_profile=self.data.feature_profile, init=self.init_record,
                                data_identity=self.data.identity,
                                **entries)

    def save_last(self) -> None:
        if self.context.is_main:
            checkpoint.save(self.run_dir / LAST, self.model, self._record(training={
                "optimizer": self.optimizer.state_dict(), "progress": asdict(self.progress),
                "rng": capture_rng()}))

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.context.is_main:
            checkpoint.save(self.run_dir / BEST, self.model,
                            self._record(validation=metrics, epoch=self.progress.epoch))

    # -- the loop ----------------------------------------------------------------------

    def fit(self) -> Path:
        """Train until the epoch limit, the stopping rule or train.max_steps; -> best.pt.
        The last line says which of them ended the run."""
        try:
            self._train()
        except HINError as error:
            self._save_before_failing(error)
            raise
        finished = finished_because(self.config, self.progress)
        if finished is not None:
            why, _, _ = finished
            self.folder.say(f"the run in {self.run_dir} stopped: it {why}")
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

    def _save_before_failing(self, error: HINError) -> None:
        """Keep what was trained when a problem stops the run after training began, unless
        the problem is the weights (a non-finite loss, a diverged model: the last good
        `last.pt` is kept then) or a full disk."""
        finite = all(bool(torch.isfinite(weights).all()) for weights in self.model.parameters())
        if isinstance(error, (TrainingError, OutOfSpaceError)) or not finite \
                or self.progress.step == 0:
            return      # no room to save, or nothing worth saving
        self.save_last()
        self.folder.say(f"saved {self.run_dir / LAST} (step {self.progress.step}) before "
                        f"stopping; once the problem below is fixed: hin train --resume "
                        f"{quote(str(self.run_dir))}")

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
        order = distributed.EpochOrder(len(self.data.train_set), items, train.seed,
                                       epoch, self.context, self.progress.batch)
        loader = make_loader(self.data.train_set, items // self.context.world_size,
                             sampler=order, num_workers=self.config.data.num_workers,
                             seed=train.seed + epoch)
        self.epoch_batches = order.batches
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
            self.folder.log({"event": "step", "stage": self.config.train.stage, "epoch": epoch,
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
            self.folder.log({"event": "stop", "reason": "signal", "step": self.progress.step})
            raise TrainingInterrupted(
                f"interrupted at epoch {epoch}, step {self.progress.step}; saved "
                f"{self.run_dir / LAST}; continue with `hin train --resume {quote(str(self.run_dir))}`")
        if train.max_steps and self.progress.step >= train.max_steps:
            self.save_last()
            self.folder.log({"event": "stop", "reason": "max_steps", "step": self.progress.step})
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
        self.folder.log({"event": "nonfinite", "step": self.progress.step + 1, "loss": str(value),
                   "policy": self.config.train.nonfinite})
        if self.config.train.nonfinite == "stop":
            last = self.run_dir / LAST
            kept = (f"the last good checkpoint is {last} (not overwritten)" if last.is_file()
                    else "no checkpoint was saved before it (train.checkpoint_every=N saves "
                         "one every N steps)")
            raise TrainingError(
                f"non-finite loss ({value}) at {where}{rank}; {kept}. Lower train.lr, or set "
                "train.nonfinite=skip to skip such batches")
        self.folder.say(f"skipping a batch with non-finite loss at {where}")
        self.progress.batch += 1
        self.progress.skipped += 1
        share = self.config.train.max_skipped_share
        if self.progress.skipped > max(1, int(share * self.epoch_batches)):
            raise TrainingError(
                f"train.nonfinite=skip skipped {self.progress.skipped} of the "
                f"{self.epoch_batches} batches of epoch {self.progress.epoch} (non-finite "
                f"losses), more than train.max_skipped_share={share}: the model is not "
                f"learning. Lower train.lr (now {self.config.train.lr}) and resume or start "
                f"again; {self.run_dir / LAST} was not overwritten")

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
        self.folder.say(f"epoch {epoch}: validation " + ", ".join(
            f"{name} {100 * value:.1f}" for name, value in metrics.items())
            + (" (best)" if improved else f" (best {100 * self.progress.best_score:.1f} at "
                                          f"epoch {self.progress.best_epoch})"))
        self.folder.log({"event": "epoch", "stage": train.stage, "epoch": epoch,
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
        self.progress.skipped = 0
        self.save_last()
