"""What a checkpoint knows besides its weights: the typed record of its `extra` entries.

One frozen dataclass names every entry a checkpoint may hold (the run's configuration, the
vocabulary, the extractors its features came from and their layout, where it came from,
...), so readers and the writer share one list of keys instead of string literals. The
record carries a format version; checkpoints written before it (no `record_version`) still
load, their origin read from what they hold.

It also holds the one rule for "do these feature files fit this checkpoint": a file's
recorded extractor and its layout (tokens per image, feature sizes) against the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from hin.data.features import FEATURES_SUFFIX, file_attributes, open_hdf5
from hin.errors import HINError

RECORD_VERSION = 1
TRAINED = "hin-trained"          # written by `hin train`
REFERENCE = "reference"          # imported from the authors' code by `hin import-checkpoint`
UNKNOWN = "unknown"              # an older file that says neither
ORIGINS = (TRAINED, REFERENCE, UNKNOWN)
FEATURE_KINDS = ("grid", "region")
# How features were computed or stored, not what they are: never a reason to refuse a file.
HOW_STORED = frozenset({"compute_dtype", "storage_dtype", "weights"})
REFERENCE_SELECTION_NOTE = (
    "this checkpoint was imported from the reference implementation, whose training script "
    "kept the epoch with the best TEST-split CIDEr (*_best_test.pth): scores on the Karpathy "
    "test split are optimistic; compare on the validation split")


class RecordError(HINError, ValueError):
    """A checkpoint record that cannot be read, or features that do not fit it."""


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint's `extra` entries, typed. None/empty: not recorded.

    `features[kind]`: the extractor that made the `kind` features (its registered name under
    "extractor" and the attributes it records, as a feature file written by `hin extract`
    holds them; a weights file under "weights"). `layout[kind]`: what the features looked
    like (`tokens` per image for the grid, `dim`). `data_identity`: what the data trained on
    was (`hin.data.identity`, filled by training). `source`: for an import, the file it came from and how its head
    count was known."""

    origin: str = UNKNOWN
    config: dict[str, Any] | None = None
    vocabulary: dict[str, Any] | None = None
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    layout: dict[str, dict[str, int]] = field(default_factory=dict)
    feature_profile: dict[str, Any] | None = None
    data_identity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    validation: dict[str, float] | None = None
    epoch: int | None = None
    training: dict[str, Any] | None = None
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise RecordError(f"checkpoint origin {self.origin!r} is not one of {ORIGINS}")

    def to_dict(self) -> dict[str, Any]:
        """The `extra` entries to save: the version, the origin and what is recorded."""
        entries: dict[str, Any] = {"record_version": self.version, "origin": self.origin}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name not in ("version", "origin") and value not in (None, {}):
                entries[item.name] = value
        return entries

    @classmethod
    def from_dict(cls, extra: Mapping[str, Any], source: str = "the checkpoint") -> CheckpointRecord:
        """The record of a checkpoint's `extra`; entries this hin does not know are left out."""
        version = extra.get("record_version")
        if version is None:     # written before the record had a version
            origin = TRAINED if extra.get("config") else UNKNOWN
        elif not isinstance(version, int) or version > RECORD_VERSION:
            raise RecordError(f"{source} has checkpoint record version {version!r}; this hin "
                              f"reads up to {RECORD_VERSION}: update hin")
        else:
            origin = str(extra.get("origin", UNKNOWN))
        known = {item.name for item in fields(cls)} - {"version", "origin"}
        values = {key: value for key, value in extra.items() if key in known and value is not None}
        return cls(origin=origin, version=RECORD_VERSION, **values)

    @property
    def max_regions(self) -> int | None:
        """The `data.max_regions` the model was trained with (None: not recorded)."""
        recorded = ((self.config or {}).get("data") or {}).get("max_regions")
        return int(recorded) if recorded is not None else None

    @property
    def annotations(self) -> str | None:
        """The annotations the model was trained from, as recorded (None: not recorded)."""
        recorded = ((self.config or {}).get("data") or {}).get("annotations")
        return str(recorded) if recorded else None

    def notes(self) -> list[str]:
        """What a reader of this checkpoint's scores must know."""
        return [REFERENCE_SELECTION_NOTE] if self.origin == REFERENCE else []


def file_layout(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, int]]:
    """A feature file's recorded attributes (`hin_*`, as `hin extract` writes them; empty for
    other files) and its layout: the first entry's `tokens` (grid files) and `dim`."""
    with open_hdf5(path) as handle:
        attributes = file_attributes(handle)
        first = next((name for name in handle if name.endswith(FEATURES_SUFFIX)), None)
        layout: dict[str, int] = {}
        if first is not None and len(handle[first].shape) == 2:
            rows, dim = (int(size) for size in handle[first].shape)
            layout = {"tokens": rows, "dim": dim} if kind == "grid" else {"dim": dim}
    return attributes, layout


def feature_differences(record: CheckpointRecord, kind: str, attributes: Mapping[str, Any],
                        layout: Mapping[str, int]) -> list[str]:
    """How `kind` features with these attributes and layout differ from those the checkpoint
    was trained on; what either side does not record cannot differ."""
    trained = record.features.get(kind) or {}
    trained_layout = record.layout.get(kind) or {}
    differences = [f"{key} {layout[key]} (trained on {trained_layout[key]})"
                   for key in ("tokens", "dim") if key in layout and key in trained_layout
                   and layout[key] != trained_layout[key]]
    differences += [f"{key} {attributes[key]!r} (trained on {trained[key]!r})"
                    for key in sorted(set(trained) & set(attributes) - HOW_STORED)
                    if not _same(attributes[key], trained[key])]
    return differences


def _same(a: Any, b: Any) -> bool:
    """Equal attribute values, arrays (a file's) and lists (a checkpoint's) alike."""
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return bool(a == b)


def require_matching_features(checkpoint: str | Path, record: CheckpointRecord,
                              files: Mapping[str, str | Path], flags: Mapping[str, str]) -> None:
    """Refuse feature files (kind -> path) made otherwise than the checkpoint's features, in
    one line naming the file, the checkpoint and what differs. `flags`: kind -> the option
    that gave the file (`--grid`), for the message."""
    for kind, path in files.items():
        attributes, layout = file_layout(path, kind)
        differences = feature_differences(record, kind, attributes, layout)
        if differences:
            made_by = (record.features.get(kind) or {}).get("extractor")
            wanted = f" (made by {made_by!r})" if made_by else ""
            raise RecordError(
                f"{flags.get(kind, kind)} {path} holds {kind} features of another extraction "
                f"than {checkpoint} was trained on: {'; '.join(differences)}; give the "
                f"{kind} features made as its training features were{wanted}")


def training_features(grid: str | Path, region: str | Path
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    """What a checkpoint trained on these files records of them: attributes and layout."""
    features, layouts = {}, {}
    for kind, path in zip(FEATURE_KINDS, (grid, region)):
        features[kind], layouts[kind] = file_layout(path, kind)
    return features, layouts

