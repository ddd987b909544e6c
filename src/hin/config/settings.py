"""The settings of a model, a dataset and a training run, with their checks: HINConfig (the
architecture), DataConfig, TrainConfig and RunConfig (all of a run, saved with it and in every
checkpoint, so that a saved model can be rebuilt without the files it was trained from).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hin.config.base import (
    POSITION_TABLES,
    ConfigError,
    _finite_number,
    check_precision,
    require_choice,
    require_non_negative_ints,
    require_positive_ints,
)
from hin.config.decoding import DecodingConfig
from hin.config.files import apply_overrides, from_dict, load_yaml


@dataclass(frozen=True)
class HINConfig:
    """Architecture of one HIN model (docs/model.md §1–6). Defaults are the paper's."""

    vocab_size: int = 10201
    num_layers: int = 3
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    dropout: float = 0.1
    max_positions: int = 54
    grid_dim: int = 1024
    region_dim: int = 2048
    unk_id: int = 0
    pad_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    position_table: str = "frozen-random"

    def __post_init__(self) -> None:
        require_positive_ints(self, "vocab_size", "num_layers", "d_model", "num_heads", "d_ff",
                              "max_positions", "grid_dim", "region_dim")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"HINConfig.d_model ({self.d_model}) must be divisible by num_heads "
                f"({self.num_heads}); e.g. d_model=512 with 8 heads gives 64 per head")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"HINConfig.dropout must be in [0, 1), got {self.dropout!r}")
        specials = {"unk_id": self.unk_id, "pad_id": self.pad_id, "bos_id": self.bos_id,
                    "eos_id": self.eos_id}
        for name, value in specials.items():
            if not 0 <= value < self.vocab_size:
                raise ConfigError(
                    f"HINConfig.{name}={value} is outside the vocabulary (size {self.vocab_size})")
        if len(set(specials.values())) != len(specials):
            raise ConfigError(f"HINConfig special token ids must be distinct, got {specials}")
        if self.position_table not in POSITION_TABLES:
            raise ConfigError(
                f"HINConfig.position_table must be one of {POSITION_TABLES}, "
                f"got {self.position_table!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HINConfig:
        return from_dict(cls, values)


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset's files are and how batches are made from them (docs/model.md §2, §6, §9).

    Defaults point at the synthetic dataset written by `hin data synth --out data/synth`.
    `annotations` is a directory with captions_{train,val}2014.json and the Karpathy split
    files coco_{train,restval,dev,test}_ids.npy, or the path of Karpathy's dataset_coco.json.
    """

    annotations: str = "data/synth"
    grid_features: str = "data/synth/grid.hdf5"
    region_features: str = "data/synth/region.hdf5"
    vocabulary: str = "data/synth/vocab.json"
    max_regions: int = 50
    max_caption_tokens: int = 54
    cache_features: bool = False
    num_workers: int = 2

    def __post_init__(self) -> None:
        require_positive_ints(self, "max_regions", "max_caption_tokens")
        if self.max_caption_tokens < 2:
            raise ConfigError("DataConfig.max_caption_tokens must leave room for <bos> and <eos>")
        require_non_negative_ints(self, "num_workers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        return from_dict(cls, values)


STAGES = ("xe", "scst")
SCST_CAPTIONS = ("beam", "sample")
NONFINITE_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage (docs/model.md §8): cross-entropy (`xe`) or self-critical (`scst`).

    `lr` is the stage's base rate; the epoch-wise schedule of the stage scales it.
    Validation always uses the validation split; the test split is never read here. It is
    `hin evaluate` with the decoding settings `validation` (the beam SCST trains on is found
    with its beam size and length too, as in the reference).
    `tensorboard` mirrors the run's log to TensorBoard when that package is installed.
    `precision` (fp32 | bf16 | auto) is the arithmetic of the training forward passes (the
    validation decoding's is `validation.precision`); losses, rewards and the optimiser state
    are always float32.
    `captions_per_image` k: 1 = shuffled (image, caption) pairs; k > 1 = each batch holds
    batch_size / k images with k of their captions, encoded once per image (XE only:
    SCST batches are `batch_size` images).
    `batch_size` always counts captions.
    `nonfinite`: a non-finite loss stops the run, or (`skip`) skips its batch; more than
    `max_skipped_share` of an epoch's batches (at least one) skipped stops it.
    `scst_captions`: which captions SCST rewards. `beam` (the reference): the validation
    beam's K captions, each against the mean reward of the K; `sample` ("new self-critical"):
    `scst_samples` captions drawn from the model, each against the mean reward of the others.
    """

    stage: str = "xe"
    epochs: int = 20
    batch_size: int = 50
    lr: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    seed: int = 0
    validation: DecodingConfig = DecodingConfig()
    val_batch_size: int = 50
    val_full_metrics: bool = True
    patience: int = 5
    min_epochs: int = 15
    checkpoint_every: int = 0
    max_steps: int = 0
    nonfinite: str = "stop"
    max_skipped_share: float = 0.05
    device: str = "auto"
    precision: str = "fp32"
    captions_per_image: int = 1
    log_every: int = 20
    tensorboard: bool = True
    scst_captions: str = "beam"
    scst_samples: int = 5

    def __post_init__(self) -> None:
        require_positive_ints(self, "epochs", "batch_size", "val_batch_size", "log_every",
                              "captions_per_image")
        check_precision(self.precision, what="TrainConfig.precision")
        if self.batch_size % self.captions_per_image:
            raise ConfigError(f"TrainConfig.batch_size ({self.batch_size}) counts captions and "
                              f"must be a multiple of captions_per_image ({self.captions_per_image})")
        if self.stage not in STAGES:
            raise ConfigError(f"TrainConfig.stage must be one of {STAGES}, got {self.stage!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"TrainConfig.nonfinite must be one of {NONFINITE_POLICIES}, "
                              f"got {self.nonfinite!r}")
        for name in ("patience", "min_epochs", "checkpoint_every", "max_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be a non-negative integer "
                                  f"(0 = off), got {getattr(self, name)!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        for name in ("adam_beta1", "adam_beta2"):     # Adam's decay rates
            if not _finite_number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not _finite_number(self.max_skipped_share) or not 0 <= self.max_skipped_share <= 1:
            raise ConfigError("train.max_skipped_share must be in [0, 1], got "
                              f"{self.max_skipped_share!r}")
        require_choice(self, "scst_captions", SCST_CAPTIONS)
        require_positive_ints(self, "scst_samples")
        if self.scst_samples < 2:
            raise ConfigError(f"TrainConfig.scst_samples must be at least 2 (each sample's "
                              f"baseline is the mean reward of the others), got {self.scst_samples}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; saved resolved in the run directory and every
    checkpoint. `model.vocab_size` is always taken from the vocabulary file."""

    run_dir: str = "runs/xe"
    model: HINConfig = HINConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if not str(self.run_dir).strip():
            raise ConfigError("run_dir is empty: name the run's directory, e.g. run_dir=runs/try "
                              "(an empty one would fill the current directory)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        return from_dict(cls, values)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
        """A YAML file (any section may be omitted) with `section.key=value` overrides."""
        values = load_yaml(path) if path else {}
        return cls.from_dict(apply_overrides(values, list(overrides)))
