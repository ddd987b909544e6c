"""Caption data sets beyond COCO, in the formats they are distributed in (docs/features.md).

- Karpathy's Flickr8k and Flickr30k files (`dataset_flickr8k.json`, `dataset_flickr30k.json`):
  the layout of `dataset_coco.json` without COCO ids; an image's id is its `imgid` and its
  picture is found by `filename` (`1000268201_693b08cb0e.jpg`). Splits `train`, `val`, `test`.
- nocaps' validation file (`nocaps_val_4500_captions.json`): COCO's caption-file layout with
  images from Open Images; every image is in the validation split (nocaps publishes no
  training captions and keeps its test captions on its server), so it is for evaluation.

This module only reads and checks: it returns plain entries, which `hin.data.coco.load_splits`
turns into splits, so every format ends in the same `Split`. Like the COCO readers it never
guesses: a missing id, file name or caption is an error naming the file and the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hin.data.errors import DataError

KARPATHY_COCO, KARPATHY_FLICKR, NOCAPS = "karpathy-coco", "karpathy-flickr", "nocaps"
FLICKR_SPLITS = ("train", "val", "test")
NOCAPS_SPLIT = "val"


@dataclass(frozen=True)
class Entry:
    """One image of a caption file: id, picture file name, split part and its captions."""

    image_id: int
    file_name: str
    part: str
    captions: tuple[str, ...]


def json_format(path: Path, content: Any) -> str:
    """Which caption file `content` (parsed from `path`) is: a nocaps/COCO caption file
    (`images` and `annotations`), else Karpathy's by his `dataset` key (`coco`, `flickr8k`,
    `flickr30k`), else by its first image (`cocoid`: COCO; only `imgid`: Flickr)."""
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise DataError(f"{path} is not a caption file hin reads: expected Karpathy's "
                        "dataset_{coco,flickr8k,flickr30k}.json or nocaps' validation file "
                        "(an object with an 'images' list)")
    if isinstance(content.get("annotations"), list):
        return NOCAPS
    if str(content.get("dataset", "")).startswith("flickr"):
        return KARPATHY_FLICKR
    if content.get("dataset") == "coco":
        return KARPATHY_COCO
    first = content["images"][0] if content["images"] else {}
    if isinstance(first, dict) and "cocoid" not in first and "imgid" in first:
        return KARPATHY_FLICKR
    return KARPATHY_COCO


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def flickr_entries(path: Path, content: dict[str, Any]) -> list[Entry]:
    """Every image of a Karpathy Flickr file, checked."""
    entries = []
    for number, image in enumerate(content["images"]):
        where = f"{path}: image entry {number}"
        if not isinstance(image, dict) or not _integer(image.get("imgid")):
            raise DataError(f"{where}: 'imgid' is {_get(image, 'imgid')!r}, not an integer image "
                            "id; fix it in the file")
        where += f" (imgid {image['imgid']})"
        if image.get("split") not in FLICKR_SPLITS:
            raise DataError(f"{where}: split {image.get('split')!r}; the Flickr split names are "
                            f"{', '.join(FLICKR_SPLITS)}")
        if not isinstance(image.get("filename"), str) or not image["filename"]:
            raise DataError(f"{where}: 'filename' is {image.get('filename')!r}, not the "
                            "picture's file name")
        sentences = image.get("sentences")
        raws = [_get(sentence, "raw") for sentence in sentences] \
            if isinstance(sentences, list) else []
        captions = tuple(raw for raw in raws if isinstance(raw, str) and raw.strip())
        if not raws or len(captions) != len(raws):
            raise DataError(f"{where}: needs 'sentences' with a non-empty 'raw' caption each; "
                            "fix or remove the image")
        entries.append(Entry(image["imgid"], image["filename"], image["split"], captions))
    return entries


def nocaps_entries(path: Path, content: dict[str, Any]) -> list[Entry]:
    """Every image of nocaps' validation file with its captions (in annotation order), checked.
    An image without captions is an error: it could not be scored."""
    captions: dict[int, list[str]] = {}
    file_names: dict[int, str] = {}
    for number, image in enumerate(content["images"]):
        if not isinstance(image, dict) or not _integer(image.get("id")) \
                or not isinstance(image.get("file_name"), str):
            raise DataError(f"{path}: image entry {number} needs an integer 'id' and a "
                            f"'file_name' (got {image!r:.120}); it is not nocaps' format")
        if image["id"] in file_names:
            raise DataError(f"{path}: image id {image['id']} is listed twice; each image once")
        file_names[image["id"]] = image["file_name"]
        captions[image["id"]] = []
    for number, annotation in enumerate(content["annotations"]):
        image_id = _get(annotation, "image_id")
        caption = _get(annotation, "caption")
        if image_id not in captions or not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{path}: annotation {number} (image_id {image_id!r}) needs an image "
                            "listed in 'images' and a non-empty 'caption'")
        captions[image_id].append(caption)
    bare = [image_id for image_id, texts in captions.items() if not texts]
    if bare:
        raise DataError(f"{path}: images without captions: {len(bare)} (first: {bare[:5]}); "
                        "nocaps' validation file gives 10 per image: use that file")
    return [Entry(image_id, file_names[image_id], NOCAPS_SPLIT, tuple(captions[image_id]))
            for image_id in sorted(captions)]


def _get(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else None
