"""`hin explain`'s content: per image and model the caption, the maps of its best caption
(read teacher-forced, exactly the attention the search used), the geometry to draw them on,
and each caption's CIDEr-D against the references."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from hin.caption import Captioner, read_user_picture
from hin.config import DecodingConfig
from hin.data.coco import load_split
from hin.data.features import FeatureStore, ImageGeometry, describe_geometry, read_attributes
from hin.data.vocab import tokenize
from hin.decoding import teacher_forcing_inputs
from hin.errors import UsageError
from hin.explain.maps import attention_maps, select_layer
from hin.extract.images import pictures_by_id, read_picture, recorded_orientation
from hin.extract.registry import ImageEntry
from hin.metrics import CiderDTable, cider_d

WORD_SOURCES = ("grid", "region")


@dataclass(frozen=True)
class ModelView:
    """One model's caption and maps for one image, as a figure shows them.

    grid_map [Ng] and region_map [n] (the image's real regions only) are the encoder's global
    tokens' attention at the chosen layer (or the mean over layers); word_maps [words, Ng or n]
    the decoder's attention while it produced each word (`word_source`: grid or region).
    `words` are the generated tokens up to <eos>; `caption` is the reported text.
    """

    label: str
    caption: str
    words: tuple[str, ...]
    grid_map: np.ndarray
    region_map: np.ndarray
    geometry: ImageGeometry
    word_maps: np.ndarray | None = None
    word_source: str = "grid"
    cider: float | None = None


@dataclass(frozen=True)
class ImageExplanation:
    """Everything one figure shows: the picture (None when it could not be found), one view
    per model, the references, and notes on what could not be drawn."""

    name: str
    image_id: int | None
    picture: Image.Image | None
    views: tuple[ModelView, ...]
    references: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    unfamiliar: str | None = None     # the first checkpoint's hin.data.familiarity note



def picture_geometry(captioner: Captioner, name: str, grid_entry: ImageEntry,
                     region_entry: ImageEntry) -> ImageGeometry:
    """Where a picture's maps lie on it, from what its captioner's extractors returned for it:
    the one rule of `hin explain` and `hin serve` (boxes checked against region features)."""
    grid_extractor, region_extractor = captioner.extractors()
    return describe_geometry(name, grid_extractor.attributes(), grid_entry, region_entry,
                             len(grid_entry["features"]), f"the {grid_extractor.name} extractor",
                             f"the {region_extractor.name} extractor",
                             region_rows=len(region_entry["features"]))


def explain_arrays(captioner: Captioner, grids: Sequence[np.ndarray], regions: Sequence[np.ndarray],
                   geometries: Sequence[ImageGeometry], *, label: str, layer: int | None = None,
                   words: str | None = None) -> list[ModelView]:
    """Caption a batch of feature arrays with `captioner`'s model and settings, and read the
    maps of its best caption (teacher-forced: exactly the attention the search used)."""
    if words is not None and words not in WORD_SOURCES:
        raise UsageError(f"words must be one of {WORD_SOURCES}, got {words!r}")
    grid, region = captioner.batch(grids, regions)
    best = [result.captions[0] for result in captioner.caption_batch(grid, region, [label] * len(grids))]
    produced = [caption.ids for caption in best]     # hin.decoding.hypothesis_ids: the one rule
    vocab = captioner.vocab
    maps = attention_maps(captioner.model, grid, region,
                          teacher_forcing_inputs(produced, vocab.bos_id, vocab.pad_id))
    grid_maps = select_layer(maps.encoder_grid, layer).numpy()
    region_maps = select_layer(maps.encoder_region, layer).numpy()
    decoder = None if words is None else select_layer(getattr(maps, f"decoder_{words}"), layer).numpy()
    views = []
    for i, word_ids in enumerate(produced):
        present = (~maps.region_mask[i]).nonzero()
        real = int(present[-1]) + 1 if len(present) else 0     # trailing padding dropped
        word_maps = None
        if decoder is not None:
            word_maps = decoder[i, :len(word_ids)] if words == "grid" else decoder[i, :len(word_ids), :real]
        views.append(ModelView(
            label=label, caption=best[i].text,
            words=best[i].words,
            grid_map=grid_maps[i], region_map=region_maps[i, :real], geometry=geometries[i],
            word_maps=word_maps, word_source=words or "grid"))
    return views


def checkpoint_labels(checkpoints: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[str]:
    """Column titles: `labels`, or each checkpoint's folder name (`runs/demo/xe/best.pt` -> `xe`),
    `folder/name` where two folders' names are equal; never a whole path."""
    if labels is not None:
        if len(labels) != len(checkpoints):
            raise UsageError(f"--labels gives {len(labels)} names for {len(checkpoints)} checkpoints: "
                             "give one per checkpoint, in the order of the columns")
        return list(labels)
    paths = [Path(c) for c in checkpoints]
    short = [path.parent.name or path.stem for path in paths]
    if len(set(short)) == len(short) or len(set(paths)) < len(paths):
        return short
    return [f"{path.parent.name}/{path.name}" if path.parent.name else path.name for path in paths]


def _picture_files(images: str | Path | None, wanted: Sequence[int]) -> dict[int, Path]:
    """The pictures of the images explained; other files in `images` are not looked at."""
    return {} if images is None else pictures_by_id(images, wanted)


def _references(annotations: str | Path | None, split: str | None, ids: Sequence[int] | None,
                limit: int | None) -> tuple[list[int], dict[int, list[str]]]:
    """The ids to explain and their references: `ids`, or the split's first `limit` images."""
    if annotations is None:
        if split is not None:
            raise UsageError("--split needs --annotations (the directory or dataset_coco.json it comes from)")
        if not ids:
            raise UsageError("give pictures, --ids, or --split with --annotations")
        return list(ids), {}
    if split is None:
        raise UsageError("--annotations needs --split: the split whose references are shown "
                         "(and whose references give CIDEr-D its document frequencies)")
    images = load_split(annotations, split)
    if ids:
        strays = [i for i in ids if i not in images.images]
        if strays:
            raise UsageError(f"image ids {strays[:10]} are not in the {split} split of {annotations}")
        chosen = list(ids)
    else:
        chosen = images.image_ids[:limit] if limit is not None else images.image_ids
    return chosen, images.references()


def _cider(explanations: list[ImageExplanation], references: dict[int, list[str]]) -> list[ImageExplanation]:
    """Each view's CIDEr-D against its image's references, document frequencies from all the
    given references (the split's), as training's validation scores: spaCy-tokenised text."""
    scored = [(e.image_id, e) for e in explanations if e.image_id is not None and e.image_id in references]
    if not scored:
        return explanations
    tokenised = {i: [" ".join(tokenize(c)) for c in captions] for i, captions in references.items()}
    table = CiderDTable.from_references(tokenised, documents="image", tokenized=True)
    per_model = []
    for column in range(len(scored[0][1].views)):
        candidates = {i: e.views[column].caption for i, e in scored}
        per_model.append(cider_d(candidates, {i: tokenised[i] for i in candidates}, df=table)[1])
    result = []
    for explanation in explanations:
        if explanation.image_id in references:
            views = tuple(replace(view, cider=scores[explanation.image_id])
                          for view, scores in zip(explanation.views, per_model))
            explanation = replace(explanation, views=views,
                                  references=tuple(references[explanation.image_id]))
        result.append(explanation)
    return result


def explain(checkpoints: Sequence[str | Path], *, pictures: Sequence[str | Path] = (),
            ids: Sequence[int] | None = None, grid: str | Path | None = None,
            region: str | Path | None = None, images: str | Path | None = None,
            annotations: str | Path | None = None, split: str | None = None, limit: int | None = None,
            layer: int | None = None, words: str | None = None, labels: Sequence[str] | None = None,
            decoding: DecodingConfig = DecodingConfig(), device: str = "auto",
            batch_size: int = 8, vocab: str | Path | None = None,
            extractor_weights: Mapping[str, str | Path] | None = None) -> list[ImageExplanation]:
    """Caption and read the maps of pictures (each checkpoint re-runs its recorded extractors)
    or of feature-file images (`ids`, or a split's first `limit`), one view per checkpoint.
    `vocab`, `extractor_weights`: as `Captioner`'s, for every checkpoint."""
    if not checkpoints:
        raise UsageError("explain needs at least one checkpoint")
    if pictures and any(v is not None for v in (ids, grid, region, split, annotations, images)):
        raise UsageError("give pictures, or feature files (--grid/--region with --ids or --split, pictures "
                         "found by id in --images), not both")
    features = None if pictures else _feature_files(grid, region)
    labels = checkpoint_labels(checkpoints, labels)
    captioners = [Captioner(c, device=device, decoding=decoding, batch_size=batch_size, vocab=vocab,
                            extractor_weights=extractor_weights) for c in checkpoints]
    if features is None:    # pictures
        return [explanation for start in range(0, len(pictures), batch_size)
                for explanation in _explain_pictures(captioners, labels, pictures[start:start + batch_size],
                                                     layer, words)]
    grid, region = features
    for captioner in captioners:
        captioner.opened.require_features(grid, region)
    chosen, references = _references(annotations, split, ids, limit)
    files = _picture_files(images, chosen)
    orientation = recorded_orientation(read_attributes(grid))    # as the file's boxes are
    stores = [FeatureStore(grid, region, max_regions=c.max_regions, grid_dim=c.model.config.grid_dim,
                           region_dim=c.model.config.region_dim) for c in captioners]
    try:
        explanations = []
        for start in range(0, len(chosen), batch_size):
            chunk = chosen[start:start + batch_size]
            columns = []
            for captioner, label, store in zip(captioners, labels, stores):
                arrays = [store[i] for i in chunk]
                columns.append(explain_arrays(captioner, [a[0] for a in arrays], [a[1] for a in arrays],
                                              [store.geometry(i) for i in chunk], label=label, layer=layer,
                                              words=words))
            for row, image_id in enumerate(chunk):
                picture = None
                notes: tuple[str, ...] = ()
                if image_id in files:
                    read = read_picture(files[image_id], orientation=orientation)
                    picture, notes = read.rgb, (read.note,) if read.note else ()
                else:
                    where = f"in {images}" if images is not None else "(no --images folder given)"
                    notes = (f"no picture of image {image_id} {where}: maps drawn on a blank canvas",)
                explanations.append(ImageExplanation(str(image_id), image_id, picture,
                                                     tuple(column[row] for column in columns), notes=notes))
    finally:
        for store in stores:
            store.close()
    return _cider(explanations, references)


def _feature_files(grid: str | Path | None, region: str | Path | None) -> tuple[str | Path, str | Path]:
    if grid is None or region is None:
        raise UsageError("give pictures, or both --grid and --region feature files")
    return grid, region


def _explain_pictures(captioners: list[Captioner], labels: list[str], paths: Sequence[str | Path],
                      layer: int | None, words: str | None) -> list[ImageExplanation]:
    read = [read_user_picture(p) for p in paths]
    loaded = [picture.rgb for picture in read]
    columns: list[list[ModelView]] = []
    unfamiliar: list[str | None] = []
    extracted: dict[tuple[int, ...], tuple[list[ImageEntry], list[ImageEntry]]] = {}
    for captioner, label in zip(captioners, labels):
        shared = tuple(map(id, captioner.extractors()))     # the same for the same features
        if shared not in extracted:
            extracted[shared] = captioner.picture_entries(loaded, [str(p) for p in paths])
        grid_entries, region_entries = extracted[shared]
        unfamiliar = unfamiliar or [captioner.unfamiliar(g["features"]) for g in grid_entries]
        geometries = [picture_geometry(captioner, str(path), g, r)
                      for path, g, r in zip(paths, grid_entries, region_entries)]
        columns.append(explain_arrays(captioner, [g["features"] for g in grid_entries],
                                      [r["features"] for r in region_entries], geometries, label=label,
                                      layer=layer, words=words))
    return [ImageExplanation(str(path), None, picture.rgb, tuple(column[row] for column in columns),
                             notes=tuple(n for n in (picture.note, note) if n), unfamiliar=note)
            for row, (path, picture, note) in enumerate(zip(paths, read, unfamiliar))]
