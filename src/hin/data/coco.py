"""COCO caption annotations and the Karpathy splits, as the paper used them (docs/model.md §9).

Two sources give the same in-memory result, a `Split` per name (image id -> file name ->
reference captions):
- a directory with COCO's `captions_train2014.json` / `captions_val2014.json` and the split
  annotation-id arrays `coco_{train,restval,dev,test}_ids.npy` (train = train + restval);
- Karpathy's `dataset_coco.json` (train = train + restval);
- Karpathy's Flickr8k/Flickr30k files and nocaps' validation file (hin.data.caption_sets).

This module must never guess: ids missing from the annotations, duplicated ids and empty
captions are errors naming the file, the count and the first ids.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hin.data.caption_sets import (
    KARPATHY_COCO,
    KARPATHY_FLICKR,
    NOCAPS,
    NOCAPS_SPLIT,
    flickr_entries,
    json_format,
    nocaps_entries,
)
from hin.data.errors import DataError, first_ids
from hin.files import read_json, require_file

SPLITS = ("train", "val", "test")
CAPTION_FILES = ("captions_train2014.json", "captions_val2014.json")
# Karpathy's split has four parts; training uses two of them. The part names are the "split"
# values of dataset_coco.json, and each part has its annotation-id file.
SPLIT_PARTS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
PART_ID_FILES = {"train": "coco_train_ids.npy", "restval": "coco_restval_ids.npy",
                 "val": "coco_dev_ids.npy", "test": "coco_test_ids.npy"}
SPLIT_ID_FILES = {split: tuple(PART_ID_FILES[part] for part in parts)
                  for split, parts in SPLIT_PARTS.items()}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: its COCO id, its file name and all its reference captions."""

    image_id: int
    file_name: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """The images of one split, ordered by image id; captions in annotation order."""

    name: str
    images: dict[int, ImageRecord]
    source: str

    @property
    def image_ids(self) -> list[int]:
        return list(self.images)

    def pairs(self) -> list[tuple[int, str]]:
        """(image id, caption) for every caption: what cross-entropy training iterates."""
        return [(image.image_id, caption)
                for image in self.images.values() for caption in image.captions]

    def captions(self) -> list[str]:
        return [caption for image in self.images.values() for caption in image.captions]

    def references(self) -> dict[int, list[str]]:
        """Image id -> its reference captions: what evaluation and SCST score against."""
        return {image_id: list(image.captions) for image_id, image in self.images.items()}


def load_splits(source: str | Path, names: Sequence[str] | None = SPLITS) -> dict[str, Split]:
    """Load the named splits (None: every split the source holds) from an annotation
    directory or a caption file (`dataset_coco.json`, Flickr's, nocaps')."""
    source = Path(source)
    unknown = [name for name in names or () if name not in SPLITS]
    if unknown:
        raise DataError(f"unknown split(s) {unknown}; the splits are {list(SPLITS)}")
    if source.is_dir():
        return _load_coco_directory(source, SPLITS if names is None else names)
    if source.is_file() and source.suffix == ".json":
        return _load_json_file(source, names)
    raise FileNotFoundError(
        f"annotations {source} not found: give a directory holding {' and '.join(CAPTION_FILES)} "
        f"with the Karpathy split files coco_{{train,restval,dev,test}}_ids.npy, "
        f"or Karpathy's dataset_coco.json")


def image_file_names(source: str | Path) -> dict[str, int]:
    """Picture file name -> image id over every split `source` holds: how pictures whose names
    hold no id (Flickr's) get the ids of their captions. A name given two ids is an error."""
    splits = load_splits(source, None)
    ids: dict[str, int] = {}
    for split in splits.values():
        for record in split.images.values():
            if ids.setdefault(record.file_name, record.image_id) != record.image_id:
                raise DataError(f"{source}: picture {record.file_name} has two image ids "
                                f"({ids[record.file_name]} and {record.image_id}); fix the file")
    return ids


def load_split(source: str | Path, name: str) -> Split:
    return load_splits(source, [name])[name]


def _fail_if_any(ids: Sequence[object], where: str, problem: str, fix: str) -> None:
    if ids:
        raise DataError(f"{where}: {len(ids)} {problem} (first: {first_ids(ids)}); {fix}")


def _duplicates(ids: Iterable[object]) -> list[object]:
    return [item for item, count in collections.Counter(ids).items() if count > 1]


@dataclass(frozen=True)
class Annotation:
    image_id: int
    caption: str


@dataclass(frozen=True)
class CocoCaptionFile:
    """One COCO captions file (`captions_val2014.json`): image file names by image id and the
    annotations by annotation id, in file order."""

    path: Path
    file_names: dict[int, str]
    annotations: dict[int, Annotation]


def read_coco_captions(path: str | Path) -> CocoCaptionFile:
    """Parse and check a COCO captions file: every annotation names a listed image, and no
    annotation id repeats. Training, evaluation and `hin score` all read COCO files here."""
    path = Path(path)
    content = read_json(path, "annotation file", error=DataError)
    if not isinstance(content, dict) or not isinstance(content.get("annotations"), list) \
            or not isinstance(content.get("images"), list):
        raise DataError(f"{path} is not a COCO caption file (needs 'images' and 'annotations' "
                        "lists)")
    try:
        file_names = {int(image["id"]): str(image.get("file_name", ""))
                      for image in content["images"]}
        entries = [(int(ann["id"]), int(ann["image_id"]), ann["caption"])
                   for ann in content["annotations"]]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: an image or annotation lacks an integer 'id', 'image_id' or a "
                        f"'caption' ({error!r}); it is not a COCO caption file") from error
    not_text = [ann_id for ann_id, _, caption in entries if not isinstance(caption, str)]
    _fail_if_any(not_text, str(path), "annotations have a 'caption' that is not text (e.g. a "
                 "number)", "fix those captions in the file")
    _fail_if_any(_duplicates(ann_id for ann_id, _, _ in entries), str(path),
                 "annotation ids are listed more than once", "each annotation id must be unique")
    orphans = [ann_id for ann_id, image_id, _ in entries if image_id not in file_names]
    _fail_if_any(orphans, str(path), "annotations name an image id absent from its 'images'",
                 "the caption file is incomplete; re-download it")
    return CocoCaptionFile(path, file_names, {ann_id: Annotation(image_id, caption)
                                              for ann_id, image_id, caption in entries})


def read_coco_references(path: str | Path) -> dict[int, list[str]]:
    """Image id -> its reference captions, in file order (what `hin score` scores against)."""
    references: dict[int, list[str]] = collections.defaultdict(list)
    for annotation in read_coco_captions(path).annotations.values():
        references[annotation.image_id].append(annotation.caption)
    return dict(references)


def _read_coco_captions(directory: Path) -> tuple[dict[int, Annotation], dict[int, str]]:
    """All annotations (by annotation id) and image file names (by image id) of the COCO files."""
    annotations: dict[int, Annotation] = {}
    file_names: dict[int, str] = {}
    for name in CAPTION_FILES:
        caption_file = read_coco_captions(directory / name)
        repeated = [ann_id for ann_id in caption_file.annotations if ann_id in annotations]
        _fail_if_any(repeated, str(caption_file.path),
                     "annotation ids also appear in an earlier caption file",
                     "each annotation id must be listed once")
        file_names.update(caption_file.file_names)
        annotations.update(caption_file.annotations)
    return annotations, file_names


def _read_id_file(path: Path) -> list[int]:
    require_file(path, "Karpathy split file",
                 f"an annotation directory needs coco_{{train,restval,dev,test}}_ids.npy next to "
                 f"{' and '.join(CAPTION_FILES)}")
    ids = np.load(path, allow_pickle=False)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"{path} must hold a 1-D integer array of annotation ids, "
                        f"got {ids.dtype} of shape {ids.shape}")
    return ids.tolist()


def refuse_overlaps(where: str, kind: str, members: dict[str, set[int]]) -> None:
    """Splits must be disjoint (an image or caption of the test split that training also
    saw inflates its scores): refuse ids shared by two splits, with the count and examples."""
    for first, second in itertools.combinations(members, 2):
        shared = sorted(members[first] & members[second])
        _fail_if_any(shared, where, f"{kind} are in both the {first} and the {second} split",
                     "splits must be disjoint: remove them from one of the two")


def _split_annotation_ids(directory: Path, names: Sequence[str]) -> dict[str, list[int]]:
    """Annotation ids per split: each of `names` (its files must exist), and every other
    split whose files exist (to check that no split shares a caption or image with it)."""
    found = {}
    for name in SPLITS:
        files = [directory / file for file in SPLIT_ID_FILES[name]]
        if name in names or all(path.is_file() for path in files):
            found[name] = [ann_id for path in files for ann_id in _read_id_file(path)]
    return found


def _load_coco_directory(directory: Path, names: Sequence[str]) -> dict[str, Split]:
    annotations, file_names = _read_coco_captions(directory)
    split_ids = _split_annotation_ids(directory, names)
    where = f"{directory} (coco_*_ids.npy)"
    refuse_overlaps(where, "annotation (caption) ids",
                    {name: set(ids) for name, ids in split_ids.items()})
    refuse_overlaps(where, "image ids", {name: {annotations[ann_id].image_id for ann_id in ids
                                                if ann_id in annotations}
                                         for name, ids in split_ids.items()})
    splits = {}
    for name in names:
        files = [directory / file for file in SPLIT_ID_FILES[name]]
        where = " + ".join(str(path) for path in files)
        annotation_ids = split_ids[name]
        _fail_if_any(_duplicates(annotation_ids), where, "annotation ids are listed more than once",
                     "each caption may appear in one split file once")
        missing = [ann_id for ann_id in annotation_ids if ann_id not in annotations]
        _fail_if_any(missing, where, f"annotation ids are not in {' or '.join(CAPTION_FILES)}",
                     "use the caption files the split files were made for (COCO 2014)")
        chosen = sorted(annotation_ids)
        empty = [ann_id for ann_id in chosen if not annotations[ann_id].caption.strip()]
        _fail_if_any(empty, where, "annotation ids have empty captions",
                     "remove them from the split file or fix the caption file")
        captions: dict[int, list[str]] = collections.defaultdict(list)
        for ann_id in chosen:
            captions[annotations[ann_id].image_id].append(annotations[ann_id].caption)
        splits[name] = Split(name, {
            image_id: ImageRecord(image_id, file_names[image_id], tuple(captions[image_id]))
            for image_id in sorted(captions)}, str(directory))
    return splits


def _load_json_file(path: Path, names: Sequence[str] | None) -> dict[str, Split]:
    """Karpathy's dataset_coco.json here; his Flickr files and nocaps' validation file through
    hin.data.caption_sets, into the same splits (names None: the splits the file holds)."""
    content = read_json(path, "annotation file", error=DataError)
    kind = json_format(path, content)
    if names is None:
        names = (NOCAPS_SPLIT,) if kind == NOCAPS else SPLITS
    if kind == KARPATHY_COCO:
        return _load_karpathy_json(path, names, content)
    entries = flickr_entries(path, content) if kind == KARPATHY_FLICKR else nocaps_entries(path, content)
    if kind == NOCAPS and set(names) - {NOCAPS_SPLIT}:
        raise DataError(f"{path} is nocaps' validation file: it holds the {NOCAPS_SPLIT} split "
                        f"only ({len(entries)} images), for evaluation (`--split {NOCAPS_SPLIT}`); "
                        f"asked for {', '.join(name for name in names if name != NOCAPS_SPLIT)}. "
                        "Train on COCO or Flickr")
    splits = {}
    for name in names:
        chosen = [entry for entry in entries if entry.part in SPLIT_PARTS[name]]
        _fail_if_any(_duplicates(entry.image_id for entry in chosen), f"{path} (split {name})",
                     "image ids are listed more than once", "each image may belong to one split once")
        splits[name] = Split(name, {entry.image_id: ImageRecord(entry.image_id, entry.file_name,
                                                                entry.captions)
                                    for entry in sorted(chosen, key=lambda e: e.image_id)},
                             str(path))
    return splits


def _load_karpathy_json(path: Path, names: Sequence[str], content: dict[str, Any]) -> dict[str, Split]:
    """`content` is what `json_format` recognised as Karpathy's COCO file (a dict with an
    'images' list)."""
    for number, image in enumerate(content["images"]):
        problem = _karpathy_image_problem(image)
        if problem:
            raise DataError(f"{path}: image entry {number}: {problem}; fix it in the file")
    refuse_overlaps(str(path), "image ids (cocoid)", {
        name: {int(image["cocoid"]) for image in content["images"]
               if image.get("split") in SPLIT_PARTS[name]} for name in SPLITS})
    splits = {}
    for name in names:
        chosen = [image for image in content["images"]
                  if image.get("split") in SPLIT_PARTS[name]]
        where = f"{path} (split {name})"
        image_ids = [int(image["cocoid"]) for image in chosen]
        _fail_if_any(_duplicates(image_ids), where, "image ids (cocoid) are listed more than once",
                     "each image may belong to one split once")
        empty = [int(image["cocoid"]) for image in chosen
                 if not image.get("sentences")
                 or any(not sentence["raw"].strip() for sentence in image["sentences"])]
        _fail_if_any(empty, where, "image ids have no captions or an empty caption",
                     "fix or remove these images in the file")
        records = {int(image["cocoid"]): ImageRecord(
            int(image["cocoid"]), str(image["filename"]),
            tuple(sentence["raw"] for sentence in image["sentences"])) for image in chosen}
        splits[name] = Split(name, {image_id: records[image_id] for image_id in sorted(records)},
                             str(path))
    return splits


KARPATHY_PARTS = tuple(part for parts in SPLIT_PARTS.values() for part in parts)


def _karpathy_image_problem(image: object) -> str | None:
    """What is wrong with one entry of dataset_coco.json's 'images', or None. An unknown split
    name is an error, not a silently unused image."""
    if not isinstance(image, dict):
        return f"{image!r} is not an object"
    if not isinstance(image.get("cocoid"), int) or isinstance(image["cocoid"], bool):
        return f"'cocoid' is {image.get('cocoid')!r}, not an integer image id"
    where = f"(cocoid {image['cocoid']}) "
    if image.get("split") not in KARPATHY_PARTS:
        return (f"{where}has split {image.get('split')!r}; the split names are "
                f"{', '.join(KARPATHY_PARTS)} (training uses train and restval)")
    if not isinstance(image.get("filename"), str):
        return f"{where}'filename' is {image.get('filename')!r}, not a file name"
    if not isinstance(image.get("sentences"), list):
        return f"{where}'sentences' is {image.get('sentences')!r}, not a list"
    for number, sentence in enumerate(image["sentences"]):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            return f"{where}sentence {number} has 'raw' {raw!r}, not the caption's text"
    return None
