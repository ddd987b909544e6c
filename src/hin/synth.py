"""The bundled synthetic captioning world: small, seeded, offline, in exactly COCO's formats.

Each image is a 96x96 picture of one to three shapes (six kinds, ten colours, small or
large) in a 3x3 layout on white; the shapes never touch, so each is one connected blob.
Five varied captions per image name colours, shapes, sizes, positions and relations. Every
picture is written as a PNG, and its features are what the picture extractor
(hin.extract.shapes, registered as `synth-grid` / `synth-regions`) computes from that
PNG, bit for bit: an 8x8 grid of cells and one region per object found in the pixels, each
through a fixed random projection. Colour, shape, size and position are recoverable only by
looking at the features, and a caption chosen without looking (the most frequent one)
scores poorly by design. The same extractors run on any picture, so a model trained here
captions a picture drawn in a paint program.

Files written (the real layouts, so the whole pipeline runs unchanged):
`captions_train2014.json`, `captions_val2014.json`, `coco_{train,restval,dev,test}_ids.npy`,
`images/<id>.png`, `grid.hdf5` and `region.hdf5` (fp16; `<id>_boxes` x1 y1 x2 y2 and
`<id>_size` in picture pixels; the extractor's settings, grid layout included, as file
attributes), `scenes.json` (per image, each region's colour, shape, size and box, in region
order), `vocab.json`, `manifest.json` (parameters and statistics) and a short `README.md`.
This module must never read anything but its arguments: the same seed gives the same files.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from hin.data.coco import CAPTION_FILES, PART_ID_FILES, SPLIT_ID_FILES, SPLIT_PARTS
from hin.data.errors import DataError
from hin.data.features import ATTRIBUTE_PREFIX
from hin.data.vocab import Vocabulary, tokenize
from hin.extract.shapes import CANVAS, PreparedPicture, ShapeFeatures
from hin.files import atomic_write, write_json, write_text

GRID_FILE = "grid.hdf5"
REGION_FILE = "region.hdf5"
SCENES_FILE = "scenes.json"
IMAGES_DIR = "images"
VOCAB_FILE = "vocab.json"
MANIFEST_FILE = "manifest.json"
README_FILE = "README.md"
OUTPUT_FILES = (*CAPTION_FILES, *(name for names in SPLIT_ID_FILES.values() for name in names),
                GRID_FILE, REGION_FILE, SCENES_FILE, VOCAB_FILE, MANIFEST_FILE, README_FILE)

SMALL_RADIUS = 7.0
LARGE_RADIUS = 12.5
SHIFT = 2.0                 # largest offset of an object from its layout cell's centre
FORMAT_VERSION = 2          # 2: pictures, scenes.json, features computed from the pictures
CAPTIONS_PER_IMAGE = 5
FIRST_IMAGE_ID = 100001

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30), "purple": (140, 60, 170), "orange": (245, 140, 30),
           "pink": (245, 150, 200), "brown": (130, 80, 40), "cyan": (40, 200, 220),
           "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
OBJECT_COUNT_PROBABILITIES = (0.3, 0.45, 0.25)
NUMBER_WORDS = ("one", "two", "three")
POSITION_PHRASES = {
    (0, 0): ("in the top left corner", "at the upper left"),
    (0, 1): ("at the top", "near the top edge"),
    (0, 2): ("in the top right corner", "at the upper right"),
    (1, 0): ("on the left", "at the left side"),
    (1, 1): ("in the center", "in the middle"),
    (1, 2): ("on the right", "at the right side"),
    (2, 0): ("in the bottom left corner", "at the lower left"),
    (2, 1): ("at the bottom", "near the bottom edge"),
    (2, 2): ("in the bottom right corner", "at the lower right"),
}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    large: bool
    row: int
    col: int
    cx: float
    cy: float
    radius: float


def random_scene(rng: np.random.Generator) -> list[SceneObject]:
    """1-3 objects in distinct layout cells. A cell is 32 px and an object reaches at most
    SHIFT + the largest radius (15 px) from the cell's centre, so neighbours stay >= 2 px
    apart: each object is its own connected component, as the region extractor needs."""
    count = int(rng.choice(len(OBJECT_COUNT_PROBABILITIES), p=OBJECT_COUNT_PROBABILITIES)) + 1
    cell = CANVAS / 3
    objects = []
    for index in rng.choice(9, size=count, replace=False):
        row, col = divmod(int(index), 3)
        large = bool(rng.random() < 0.5)
        objects.append(SceneObject(
            colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(SHAPES)), large=large,
            row=row, col=col,
            cx=float((col + 0.5) * cell + rng.uniform(-SHIFT, SHIFT)),
            cy=float((row + 0.5) * cell + rng.uniform(-SHIFT, SHIFT)),
            radius=float((LARGE_RADIUS if large else SMALL_RADIUS) + rng.uniform(-0.5, 0.5))))
    return objects


def _shape_mask(obj: SceneObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    dx, dy = xs - obj.cx, ys - obj.cy
    if obj.shape == "circle":
        return dx ** 2 + dy ** 2 <= obj.radius ** 2
    if obj.shape == "square":
        return (np.abs(dx) <= 0.8 * obj.radius) & (np.abs(dy) <= 0.8 * obj.radius)
    if obj.shape == "triangle":
        return (np.abs(dy) <= obj.radius) & (np.abs(dx) <= (dy + obj.radius) / 2)
    if obj.shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= obj.radius
    if obj.shape == "cross":
        arm = obj.radius / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= obj.radius)) | \
            ((np.abs(dy) <= arm) & (np.abs(dx) <= obj.radius))
    return (dx ** 2 + dy ** 2 <= obj.radius ** 2) & (dx ** 2 + dy ** 2 >= (obj.radius / 2) ** 2)


def render(objects: Sequence[SceneObject]) -> np.ndarray:
    """The scene as a uint8 RGB picture [CANVAS, CANVAS, 3] on white."""
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS] + 0.5
    picture = np.full((CANVAS, CANVAS, 3), 255, dtype=np.uint8)
    for obj in objects:
        picture[_shape_mask(obj, xs, ys)] = COLOURS[obj.colour]
    return picture


# ---- captions -------------------------------------------------------------------------------

def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(obj: SceneObject, size: bool = False) -> str:
    words = (["large" if obj.large else "small"] if size else []) + [obj.colour, obj.shape]
    return _article(" ".join(words))


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _position(obj: SceneObject, rng: np.random.Generator) -> str:
    return str(rng.choice(POSITION_PHRASES[(obj.row, obj.col)]))


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _listing(objs: list[SceneObject], rng: np.random.Generator) -> str:
    prefix = str(rng.choice(["", "a picture of ", "an image of ", "there is "]))
    return prefix + _join([_noun(obj) for obj in objs])


def _counting(objs: list[SceneObject], rng: np.random.Generator) -> str:
    if len(objs) == 1:
        return f"a single {objs[0].colour} {objs[0].shape} on a white background"
    return f"{NUMBER_WORDS[len(objs) - 1]} shapes, " + _join([_noun(obj) for obj in objs])


def _positions(objs: list[SceneObject], rng: np.random.Generator) -> str:
    return _join([f"{_noun(obj)} {_position(obj, rng)}" for obj in objs])


def _relations(objs: list[SceneObject], rng: np.random.Generator) -> str:
    if len(objs) == 1:
        return f"{_noun(objs[0], size=True)} {_position(objs[0], rng)}"
    first, second = objs[0], objs[1]
    text = f"{_noun(first)} {_relation(first, second)} {_noun(second)}"
    return text + (f" and {_noun(objs[2])}" if len(objs) == 3 else "")


def _sizes(objs: list[SceneObject], rng: np.random.Generator) -> str:
    link = str(rng.choice([" and ", " next to ", " with "]))
    return link.join(_noun(obj, size=True) for obj in objs)


def _attributes(objs: list[SceneObject], rng: np.random.Generator) -> str:
    return _join([_article(f"{obj.shape} that is {obj.colour}") for obj in objs])


def _colours(objs: list[SceneObject], rng: np.random.Generator) -> str:
    if len(objs) == 1:
        return f"one {objs[0].colour} shape, {_article(objs[0].shape)}, {_position(objs[0], rng)}"
    colours = list(dict.fromkeys(obj.colour for obj in objs))
    if len(colours) == 1:
        return f"{NUMBER_WORDS[len(objs) - 1]} {colours[0]} shapes"
    return f"{NUMBER_WORDS[len(objs) - 1]} shapes in " + _join(colours)


TEMPLATES: tuple[Callable[[list[SceneObject], np.random.Generator], str], ...] = (
    _listing, _counting, _positions, _relations, _sizes, _attributes, _colours)


def describe(objects: Sequence[SceneObject], rng: np.random.Generator) -> list[str]:
    """Five captions from five different templates, objects in a fresh order for each."""
    captions = []
    for template in rng.choice(len(TEMPLATES), size=CAPTIONS_PER_IMAGE, replace=False):
        order = [objects[i] for i in rng.permutation(len(objects))]
        captions.append(TEMPLATES[template](order, rng))
    return captions


# ---- writing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Image:
    image_id: int
    split: str
    caption_file: str
    objects: list[SceneObject]
    captions: list[str]

    @property
    def file_name(self) -> str:
        return f"{self.image_id}.png"


def generate(out_dir: str | Path, seed: int = 0, train: int = 2000, val: int = 250,
             test: int = 250, min_freq: int = 5, restval_fraction: float = 0.1,
             overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the synthetic dataset into `out_dir`; returns its manifest (also in manifest.json).

    `restval_fraction` of the training images go to `captions_val2014.json` + the restval
    split file, as in Karpathy's COCO split, so that train = train + restval is exercised.
    """
    out = Path(out_dir)
    for name, count in (("train", train), ("val", val), ("test", test)):
        if count <= 0:
            raise DataError(f"synthetic split {name} needs at least one image, got {count}")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise DataError(f"{out} already holds {', '.join(existing)}; choose an empty directory "
                        f"or pass overwrite=True (`hin data synth --force`)")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    restval = int(round(train * restval_fraction))
    plan = (["restval"] * restval + ["train"] * (train - restval)
            + ["val"] * val + ["test"] * test)
    images = []
    for offset, split in enumerate(plan):
        objects = random_scene(rng)
        images.append(_Image(FIRST_IMAGE_ID + offset, split,
                             CAPTION_FILES[0] if split == "train" else CAPTION_FILES[1],
                             objects, describe(objects, rng)))

    annotation_ids = _write_annotations(out, images)
    _write_pictures_and_features(out, images, progress)
    vocab = Vocabulary.build((caption for image in images if image.split != "test"
                              for caption in image.captions), min_freq=min_freq)
    vocab.save(out / VOCAB_FILE)
    manifest = _manifest(images, annotation_ids, vocab, seed, min_freq, restval_fraction)
    write_json(out / MANIFEST_FILE, manifest)
    write_text(out / README_FILE, _readme(manifest))
    return manifest


def _write_annotations(out: Path, images: list[_Image]) -> dict[str, list[int]]:
    """COCO caption files + Karpathy id arrays; returns the annotation ids per split file."""
    ids_per_file: dict[str, list[int]] = {name: [] for name in PART_ID_FILES.values()}
    contents: dict[str, dict[str, Any]] = {
        name: {"info": {"description": "hin synthetic shapes captions", "version": "1.0"},
               "licenses": [], "images": [], "annotations": []} for name in CAPTION_FILES}
    next_annotation = 1
    for image in images:
        content = contents[image.caption_file]
        content["images"].append({"id": image.image_id, "file_name": image.file_name,
                                  "height": CANVAS, "width": CANVAS})
        for caption in image.captions:
            content["annotations"].append({"id": next_annotation, "image_id": image.image_id,
                                           "caption": caption})
            ids_per_file[PART_ID_FILES[image.split]].append(next_annotation)
            next_annotation += 1
    for name, content in contents.items():
        write_json(out / name, content, indent=None)
    for name, ids in ids_per_file.items():
        with atomic_write(out / name, "wb") as file:
            np.save(file, np.asarray(ids, dtype=np.int64))
    return ids_per_file


def _write_pictures_and_features(out: Path, images: list[_Image], progress: bool) -> None:
    """Each scene as a PNG, and its features as the picture extractor computes them from it."""
    extractor = ShapeFeatures()
    (out / IMAGES_DIR).mkdir(exist_ok=True)
    scenes = {}
    bar = tqdm(total=len(images), desc="drawing synthetic pictures", unit="image",
               disable=not progress)
    with h5py.File(out / GRID_FILE, "w") as grid_file, \
            h5py.File(out / REGION_FILE, "w") as region_file, bar:
        grid_file.attrs.update(_prefixed(extractor.grid_attributes()))
        region_file.attrs.update(_prefixed(extractor.region_attributes()))
        for image in images:
            pixels = render(image.objects)
            with atomic_write(out / IMAGES_DIR / image.file_name, "wb") as file:
                Image.fromarray(pixels).save(file, format="PNG")
            picture = PreparedPicture(pixels, CANVAS, CANVAS)
            regions = extractor.region_entry(picture)
            for name, entries in ((grid_file, extractor.grid_entry(picture)), (region_file, regions)):
                for suffix, array in entries.items():
                    name.create_dataset(f"{image.image_id}_{suffix}", data=array)
            scenes[str(image.image_id)] = _scene_record(image, regions["boxes"])
            bar.update()
    write_json(out / SCENES_FILE, scenes, indent=None)
    drawn = {image.file_name for image in images}
    for older in (out / IMAGES_DIR).glob("*.png"):     # an overwritten world's other pictures
        if older.name not in drawn and older.stem.isdigit():
            older.unlink()


def read_scenes(out_dir: str | Path, attribute: str = "shape") -> dict[int, list[tuple[str, tuple[int, ...]]]]:
    """`scenes.json` of a generated dataset -> per image id, its objects as (their `attribute`
    (shape, colour or size), box)."""
    path = Path(out_dir) / SCENES_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist: it is written by `hin data synth` (regenerate "
                        "older synthetic datasets with --force)")
    scenes = json.loads(path.read_text(encoding="utf-8"))
    return {int(image_id): [(obj[attribute], tuple(obj["box"])) for obj in objects]
            for image_id, objects in scenes.items()}


def _prefixed(attributes: dict[str, object]) -> dict[str, object]:
    return {ATTRIBUTE_PREFIX + key: value for key, value in attributes.items()}


def _scene_record(image: _Image, boxes: np.ndarray) -> list[dict[str, Any]]:
    """The objects in region order: the region whose box holds an object's centre is it."""
    record = []
    for box in boxes:
        inside = [obj for obj in image.objects
                  if box[0] <= obj.cx < box[2] and box[1] <= obj.cy < box[3]]
        if len(inside) != 1 or len(boxes) != len(image.objects):
            raise RuntimeError(f"synthetic image {image.image_id}: the extractor found "
                               f"{len(boxes)} regions for {len(image.objects)} objects; the "
                               "scene layout must keep objects apart")
        obj = inside[0]
        record.append({"colour": obj.colour, "shape": obj.shape,
                       "size": "large" if obj.large else "small",
                       "box": [int(value) for value in box]})
    return record


def _manifest(images: list[_Image], annotation_ids: dict[str, list[int]], vocab: Vocabulary,
              seed: int, min_freq: int, restval_fraction: float) -> dict[str, Any]:
    extractor = ShapeFeatures()
    statistics = {}
    for name, members in SPLIT_PARTS.items():
        chosen = [image for image in images if image.split in members]
        captions = [caption for image in chosen for caption in image.captions]
        most_common, count = collections.Counter(captions).most_common(1)[0]
        regions = [len(image.objects) for image in chosen]
        statistics[name] = {
            "images": len(chosen), "captions": len(captions),
            "distinct_captions": len(set(captions)),
            "mean_caption_words": round(float(np.mean([len(tokenize(c)) for c in captions])), 2),
            "most_frequent_caption": most_common, "most_frequent_caption_share":
                round(count / len(captions), 4),
            "regions_per_image": {"min": min(regions), "mean": round(float(np.mean(regions)), 2),
                                  "max": max(regions)},
        }
    return {
        "format": "hin-synthetic", "version": FORMAT_VERSION, "seed": seed,
        "annotations": {"caption_files": list(CAPTION_FILES),
                        "split_id_files": {name: len(ids) for name, ids in annotation_ids.items()},
                        "restval_fraction": restval_fraction},
        "features": {"grid_file": GRID_FILE, "grid_shape": [extractor.grid_side ** 2,
                                                            extractor.grid_dim],
                     "region_file": REGION_FILE, "region_dim": extractor.region_dim,
                     "dtype": "float16", "images_dir": IMAGES_DIR, "scenes_file": SCENES_FILE,
                     "grid_extractor": extractor.grid_attributes(),
                     "region_extractor": extractor.region_attributes()},
        "vocabulary": {"file": VOCAB_FILE, "size": len(vocab), "min_freq": min_freq,
                       "built_from": "train + val captions"},
        "world": {"canvas": CANVAS, "colours": list(COLOURS), "shapes": list(SHAPES),
                  "objects_per_image": [1, 2, 3], "captions_per_image": CAPTIONS_PER_IMAGE},
        "splits": statistics,
    }


def _readme(manifest: dict[str, Any]) -> str:
    world = manifest["world"]
    lines = [
        "# hin synthetic captioning dataset",
        "",
        f"Generated by `hin data synth` (seed {manifest['seed']}). Scenes of 1-3 coloured "
        f"shapes ({', '.join(world['shapes'])}; {', '.join(world['colours'])}) on a "
        f"{world['canvas']}x{world['canvas']} canvas, {world['captions_per_image']} captions each.",
        "",
        "Files use the real COCO layouts: `captions_train2014.json`, `captions_val2014.json`, "
        "Karpathy split arrays `coco_{train,restval,dev,test}_ids.npy` (train = train + restval), "
        f"the pictures `{IMAGES_DIR}/<id>.png`, "
        f"grid features `{GRID_FILE}` ({manifest['features']['grid_shape']} per image, fp16), "
        f"region features `{REGION_FILE}` (one {manifest['features']['region_dim']}-d row per "
        "object found in the picture, with boxes in pixels, size, cls_prob), each object's "
        f"colour, shape, size and box in `{SCENES_FILE}`, and the vocabulary `{VOCAB_FILE}` "
        f"({manifest['vocabulary']['size']} entries). The features are what `hin extract grid "
        "--extractor synth-grid` and `hin extract regions --extractor synth-regions` compute "
        "from the pictures.",
        "",
        "| split | images | captions | distinct captions | most frequent caption share |",
        "|---|---|---|---|---|",
    ]
    for name, stats in manifest["splits"].items():
        lines.append(f"| {name} | {stats['images']} | {stats['captions']} | "
                     f"{stats['distinct_captions']} | {stats['most_frequent_caption_share']:.2%} |")
    lines += ["", f"All parameters and statistics: `{MANIFEST_FILE}`.", ""]
    return "\n".join(lines)
