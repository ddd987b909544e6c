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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hin import __version__
from hin.checkpoint.opening import DecodingCheckpoints, open_for_decoding
from hin.config import DataConfig, DecodingConfig
from hin.data.coco import ImageRecord, Split, load_split
from hin.data.dataset import ImageReferences, make_loader
from hin.data.errors import DataError
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary, tokenize
from hin.decoding import Ensemble, caption_batches
from hin.devices import resolve_device
from hin.errors import UsageError
from hin.files import json_text, refuse_overwriting, write_together
from hin.metrics import MetricsReport, cider_d, find_java, score_captions
from hin.model import HIN

SPLITS = ("val", "test", "features")
CAPTIONS_FILE = "captions.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SplitScores:
    """A split's best captions (post-processed) and what they scored: CIDEr-D (Java-free, with
    the document frequencies of the split's own references, tokenised as training tokenises
    them: what selects a run's best checkpoint) and, where Java ran, the COCO table."""

    captions: dict[int, str]
    cider_d: float | None            # None: the images have no references
    report: MetricsReport | None     # None: no references, or no Java given

    def metrics(self) -> dict[str, float]:
        """CIDEr-D, then the COCO table's scores: what validation logs."""
        if self.cider_d is None:
            raise DataError("validation needs references: none of the split's images has a caption")
        return {"CIDEr-D": self.cider_d, **(self.report.scores if self.report else {})}


def tokenised_references(images: Split) -> dict[int, list[str]]:
    """Each image's references as CIDEr-D reads them (training's spaCy tokenisation)."""
    return {image_id: [" ".join(tokenize(c)) for c in image.captions]
            for image_id, image in images.images.items() if image.captions}


def score_split(models: Sequence[HIN] | Ensemble, dataset: ImageReferences, vocab: Vocabulary,
                decoding: DecodingConfig, *, batch_size: int, num_workers: int = 0,
                java: str | None = None, spice: bool = False, progress: bool = True,
                share: tuple[int, int] = (0, 1),
                gather: Callable[[dict[int, str]], list[dict[int, str]]] | None = None,
                tokenised: dict[int, list[str]] | None = None) -> SplitScores | None:
    """Caption every image of `dataset` (`hin.decoding.caption_batches`) and score the best
    captions against its references: `hin evaluate` and validation during training alike. `java`: also compute the
    COCO table (None: CIDEr-D only). Several processes: `share` (rank, world size) says
    which images this one decodes, `gather` collects every rank's captions; rank 0 scores
    and the others get None. `tokenised`: `tokenised_references(dataset.split)`, when kept."""
    rank, world_size = share
    images = dataset.split
    loader = make_loader(dataset, batch_size, sampler=list(range(rank, len(dataset), world_size)),
                         num_workers=num_workers)
    captioned = caption_batches(models, loader, vocab, decoding, desc=f"decoding {images.name}",
                                progress=progress)
    mine = {image_id: result.best for image_id, result in captioned.items()}
    parts = gather(mine) if gather is not None else [mine]
    if rank != 0:
        return None
    captions = {image_id: text for part in parts for image_id, text in part.items()}
    references = {i: list(images.images[i].captions) for i in captions if images.images[i].captions}
    if not references:
        return SplitScores(captions, None, None)
    tokenised = tokenised if tokenised is not None else tokenised_references(images)
    cider = cider_d({i: captions[i] for i in references}, {i: tokenised[i] for i in references})[0]
    report = (score_captions({i: captions[i] for i in references}, references,
                             collapse_repeats=decoding.collapse_repeats, spice=spice, java=java,
                             progress=progress) if java else None)
    return SplitScores(captions, cider, report)


@dataclass(frozen=True)
class Evaluation:
    """Captions by image id, CIDEr-D and the metrics report (None when the images have no
    references)."""

    captions: dict[int, str]
    cider_d: float | None
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
    opened = open_for_decoding(checkpoints, resolve_device(device), vocab=vocab,
                               max_regions=max_regions)
    opened.require_features(data.grid_features, data.region_features)
    models, vocabulary, config = opened.models, opened.vocab, opened.models[0].config
    ensemble = Ensemble(models)      # the settings checked and the models cast here, once
    ensemble.prepare(decoding, batch_size)
    data = replace(data, max_regions=opened.max_regions)
    selection = [note for member in opened.members for note in member.record.notes()]
    notes = list(dict.fromkeys([*opened.notes, *(selection if split == "test" else [])]))
    store = FeatureStore(data.grid_features, data.region_features, max_regions=data.max_regions,
                         grid_dim=config.grid_dim, region_dim=config.region_dim)
    images = load_images(data, split, store)
    dataset = ImageReferences(images, store)
    java = find_java() if any(image.captions for image in images.images.values()) else None
    scores = score_split(ensemble, dataset, vocabulary, decoding, batch_size=batch_size,
                         num_workers=data.num_workers, java=java, spice=spice, progress=progress)
    if scores is None:      # only a rank other than 0 of `share` gets None; this is rank 0 of 1
        raise RuntimeError("score_split returned no scores to the only process")
    captions, report = scores.captions, scores.report
    written = []
    if out is not None:
        results = [{"image_id": i, "caption": captions[i]} for i in sorted(captions)]
        files = {out / CAPTIONS_FILE: json_text(results)}
        if report is not None:
            provenance = _provenance(opened, split, data, decoding, batch_size, notes)
            files[out / METRICS_FILE] = json_text({**report.to_dict(), "CIDEr-D": scores.cider_d,
                                               **provenance})
        # The two files describe one run: both are replaced, or (a full disk) neither; an
        # older metrics.json is removed when this run has none, never left beside new captions.
        written = write_together(files, remove=[out / METRICS_FILE])
    return Evaluation(captions, scores.cider_d, report, written, notes)


def _output_directory(out: Path) -> Path:
    """Made (or checked) before any decoding, so a bad --out never costs a decoding run."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; hin evaluate writes {CAPTIONS_FILE} and "
                         f"{METRICS_FILE} into a directory: give a directory path")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _provenance(opened: DecodingCheckpoints, split: str, data: DataConfig,
                decoding: DecodingConfig, batch_size: int, notes: list[str]) -> dict[str, Any]:
    vocabulary = opened.vocab
    return {
        "split": split,
        "checkpoints": [{"path": str(member.path), "sha256": member.sha256,
                         "origin": member.record.origin, "config": member.model.config.to_dict()}
                        for member in opened.members],
        "notes": notes,
        "decoding": {**decoding.to_dict(), "batch_size": batch_size,
                     "ensemble": len(opened.members)},
        "vocabulary": {"source": vocabulary.source, "sha256": vocabulary.digest(),
                       "size": len(vocabulary)},
        "data": {key: value for key, value in data.to_dict().items() if key != "vocabulary"},
        "versions": {"hin": __version__, "torch": torch.__version__},
    }


