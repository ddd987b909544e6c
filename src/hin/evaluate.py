"""Decode a split with one checkpoint or an ensemble, score it, and write what was done.

Writes `captions.json` (COCO results format, what the COCO evaluation server accepts) and,
when the images have references, `metrics.json`: the scores with the checkpoints' sha256,
their configurations, the decoding settings, the post-processing switches and the tool
versions, so that a number can always be traced to what produced it. The captions written
are the ones scored (post-processing applied), so `hin score` on them gives the same numbers.

This module must never train, never fall back to an untrained model, and never invent
references: images without references get captions only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hin import __version__
from hin.checkpoint import load, max_regions_for, sha256
from hin.config import DataConfig, DecodingConfig
from hin.data.coco import ImageRecord, Split, load_split
from hin.data.dataset import ImageReferences, make_loader
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary, require_same_words, vocabulary_for
from hin.decoding import caption_batches, require_decodable
from hin.devices import resolve_device
from hin.errors import UsageError
from hin.files import refuse_overwriting, write_together
from hin.metrics import MetricsReport, score_captions

SPLITS = ("val", "test", "features")
CAPTIONS_FILE = "captions.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Evaluation:
    """Captions by image id, and the metrics report (None when the images have no references)."""

    captions: dict[int, str]
    report: MetricsReport | None
    written: list[Path]
    notes: list[str]


def load_images(data: DataConfig, split: str, store: FeatureStore) -> Split:
    """A Karpathy split ("val", "test") with its references, or "features": every image of
    the grid feature file, without references (e.g. COCO test2014 for the evaluation server)."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
    if split != "features":
        return load_split(data.annotations, split)
    ids = sorted(store.grid.image_ids())
    if not ids:
        raise UsageError(f"{data.grid_features} holds no `<image_id>_features` entries")
    return Split("features", {i: ImageRecord(i, "", ()) for i in ids}, data.grid_features)


def evaluate(checkpoints: Sequence[str | Path], split: str, data: DataConfig, *,
             decoding: DecodingConfig = DecodingConfig(), batch_size: int = 50,
             out_dir: str | Path | None = None, spice: bool = True,
             device: str = "auto", progress: bool = True,
             vocab: str | Path | None = None, max_regions: int | None = None) -> Evaluation:
    """Caption every image of `split` by beam search (an ensemble when several checkpoints
    are given), score against the references, write captions.json / metrics.json to out_dir.
    The vocabulary is the one the checkpoints record; `vocab` (a file) is for checkpoints
    that record none (`data.vocabulary` is not read here). Likewise the regions per image
    are the number the checkpoints were trained with unless `max_regions` overrides it
    (`data.max_regions` is not read)."""
    if not checkpoints:
        raise UsageError("evaluate needs at least one checkpoint")
    out = None if out_dir is None else _output_directory(Path(out_dir))
    if out is not None:
        inputs = {"--annotations": data.annotations, "--grid": data.grid_features,
                  "--region": data.region_features, "--vocab": vocab,
                  **{f"--checkpoint {path}": path for path in checkpoints}}
        for name in (CAPTIONS_FILE, METRICS_FILE):
            refuse_overwriting(out / name, inputs, "give --out a folder of its own")
    device = resolve_device(device)
    loaded = [load(path, map_location=device) for path in checkpoints]
    models = [model for model, _ in loaded]
    config = models[0].config
    require_decodable(config, decoding, batch_size)
    vocabularies = [vocabulary_for(path, extra, vocab, model.config.vocab_size)
                    for path, (model, extra) in zip(checkpoints, loaded)]
    for other in vocabularies[1:]:     # an ensemble averages the same words' log-probs
        require_same_words(vocabularies[0], other, "an ensemble needs checkpoints trained "
                           "with the same vocabulary")
    vocabulary = vocabularies[0]
    chosen = [max_regions_for(path, extra, max_regions)
              for path, (_, extra) in zip(checkpoints, loaded)]
    if len({value for value, _ in chosen}) > 1:
        trained = ", ".join(f"{path}: {value}" for path, (value, _) in zip(checkpoints, chosen))
        raise UsageError(f"the checkpoints were trained with different numbers of regions per "
                         f"image ({trained}); an ensemble is given one number: choose it with "
                         "--max-regions")
    data = replace(data, max_regions=chosen[0][0])
    notes = [note for _, note in chosen if note]
    store = FeatureStore(data.grid_features, data.region_features, max_regions=data.max_regions,
                         grid_dim=config.grid_dim, region_dim=config.region_dim)
    images = load_images(data, split, store)
    loader = make_loader(ImageReferences(images, store), batch_size,
                         num_workers=data.num_workers)

    captioned = caption_batches(models, loader, vocabulary, decoding,
                                desc=f"decoding {split}", progress=progress)
    captions = {image_id: result.best for image_id, result in captioned.items()}
    collapse = decoding.collapse_repeats

    references = {i: list(image.captions) for i, image in images.images.items() if image.captions}
    report = (score_captions(captions, references, collapse_repeats=collapse, spice=spice,
                             progress=progress) if references else None)
    written = []
    if out is not None:
        results = [{"image_id": i, "caption": captions[i]} for i in sorted(captions)]
        files = {out / CAPTIONS_FILE: _json(results)}
        if report is not None:
            provenance = _provenance(checkpoints, models, split, data, decoding, batch_size,
                                     vocabulary)
            files[out / METRICS_FILE] = _json({**report.to_dict(), **provenance})
        # The two files describe one run: both are replaced, or (a full disk) neither; an
        # older metrics.json is removed when this run has none, never left beside new captions.
        written = write_together(files, remove=[out / METRICS_FILE])
    return Evaluation(captions, report, written, notes)


def _output_directory(out: Path) -> Path:
    """Made (or checked) before any decoding, so a bad --out never costs a decoding run."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; hin evaluate writes {CAPTIONS_FILE} and "
                         f"{METRICS_FILE} into a directory: give a directory path")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _provenance(checkpoints: Sequence[str | Path], models: list[Any], split: str,
                data: DataConfig, decoding: DecodingConfig, batch_size: int,
                vocabulary: Vocabulary) -> dict[str, Any]:
    return {
        "split": split,
        "checkpoints": [{"path": str(path), "sha256": sha256(path),
                         "config": model.config.to_dict()}
                        for path, model in zip(checkpoints, models)],
        "decoding": {**decoding.to_dict(), "batch_size": batch_size, "ensemble": len(models)},
        "vocabulary": {"source": vocabulary.source, "sha256": vocabulary.digest(),
                       "size": len(vocabulary)},
        "data": {key: value for key, value in data.to_dict().items() if key != "vocabulary"},
        "versions": {"hin": __version__, "torch": torch.__version__},
    }


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"
