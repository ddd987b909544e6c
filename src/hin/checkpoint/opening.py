"""Open checkpoints for decoding: the one path every command that captions takes.

`open_for_decoding` reads one checkpoint or an ensemble (each file once: the weights and the
sha256 come from the same bytes), gives each its record, picks the vocabulary by one rule
(recorded, else `--vocab`; an ensemble's members must share it), the regions per image (the
number trained with unless overridden; an ensemble is given one number) and refuses decoding
settings the models cannot decode with. `hin caption`, `hin evaluate`, `hin explain` and
`hin serve` all open their checkpoints here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hin.checkpoint import load_with_digest, max_regions_for
from hin.checkpoint.record import FEATURE_KINDS, CheckpointRecord, require_matching_features
from hin.data.vocab import Vocabulary, require_same_words, vocabulary_for
from hin.errors import UsageError
from hin.model import HIN

FEATURE_FLAGS = {"grid": "--grid", "region": "--region"}


@dataclass(frozen=True)
class OpenCheckpoint:
    """One checkpoint as read: its model (eval mode), record and the sha256 of its bytes."""

    path: Path
    model: HIN
    record: CheckpointRecord
    sha256: str

    def identity(self) -> dict[str, Any]:
        """Who this model is, as /v1/info, /v1/captions and reports name it."""
        config = self.model.config
        return {"checkpoint": self.path.name, "sha256": self.sha256,
                "origin": self.record.origin, "layers": config.num_layers,
                "d_model": config.d_model, "heads": config.num_heads,
                "vocabulary_size": config.vocab_size,
                "features": {kind: {key: (self.record.features.get(kind) or {}).get(key)
                                    for key in ("extractor", "model")}
                             for kind in FEATURE_KINDS}}


@dataclass(frozen=True)
class DecodingCheckpoints:
    """One model or an ensemble, ready to decode: members, the shared vocabulary, the regions
    per image they are given, and notes (an override of the trained number)."""

    members: tuple[OpenCheckpoint, ...]
    vocab: Vocabulary
    max_regions: int
    notes: tuple[str, ...]

    @property
    def models(self) -> list[HIN]:
        return [member.model for member in self.members]

    def require_features(self, grid: str | Path, region: str | Path) -> None:
        """Refuse feature files made otherwise than any member's training features, naming
        the member (`hin.checkpoint.record.require_matching_features`)."""
        for index, member in enumerate(self.members):
            name = (str(member.path) if len(self.members) == 1 else
                    f"ensemble member {index + 1} ({member.path})")
            require_matching_features(name, member.record, {"grid": grid, "region": region},
                                      FEATURE_FLAGS)


def open_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> OpenCheckpoint:
    """A hin checkpoint, read once: model on `device`, record, sha256."""
    model, extra, digest = load_with_digest(path, map_location=device)
    return OpenCheckpoint(Path(path), model, CheckpointRecord.from_dict(extra, str(path)), digest)


def open_for_decoding(paths: Sequence[str | Path], device: str | torch.device, *,
                      vocab: str | Path | None = None,
                      max_regions: int | None = None) -> DecodingCheckpoints:
    """Open `paths` (one checkpoint, or an ensemble: one vocabulary) for decoding; the decoding
    settings are checked where decoding starts (`hin.decoding.Ensemble.prepare`). `vocab`: a
    vocabulary file (JSON, or the reference's pickle) for checkpoints that record none;
    `max_regions`: overrides the number of regions per image the checkpoints were trained with."""
    if not paths:
        raise UsageError("give at least one checkpoint")
    members = tuple(open_checkpoint(path, device) for path in paths)
    vocabularies = [vocabulary_for(m.path, {"vocabulary": m.record.vocabulary}, vocab, m.model.config.vocab_size)
                    for m in members]
    for other in vocabularies[1:]:     # an ensemble averages the same words' log-probs
        require_same_words(vocabularies[0], other, "an ensemble needs checkpoints trained "
                           "with the same vocabulary")
    chosen = [max_regions_for(m.path, m.record, max_regions) for m in members]
    if len({value for value, _ in chosen}) > 1:
        trained = ", ".join(f"{m.path}: {value}" for m, (value, _) in zip(members, chosen))
        raise UsageError(f"the checkpoints were trained with different numbers of regions per "
                         f"image ({trained}); an ensemble is given one number: choose it with "
                         "--max-regions")
    return DecodingCheckpoints(members, vocabularies[0], chosen[0][0],
                               tuple(note for _, note in chosen if note))
