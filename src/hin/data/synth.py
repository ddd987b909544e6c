"""The bundled synthetic captioning world: small, seeded, offline, in exactly COCO's formats.

Each image is a 64x64 scene of one to three shapes (six kinds, ten colours, small or
large) in a 3x3 layout. Five varied captions per image name colours, shapes, sizes,
positions and relations. Features come from the rendered pixels through fixed random
projections (the same for every seed, like a fixed feature extractor):
- grid: 4x4 patches, each pooled to 4x4 RGB plus its patch position -> 1024-d;
- region: one per object, its crop (8x8 RGB), mean colour and box -> 2048-d;
so colour, shape, size and position are recoverable only by looking at the features, and a
caption chosen without looking (the most frequent one) scores poorly by design.

Files written (the real layouts, so the whole pipeline runs unchanged):
`captions_train2014.json`, `captions_val2014.json`, `coco_{train,restval,dev,test}_ids.npy`, `grid.hdf5`, `region.hdf5`
(fp16), `vocab.json`, `manifest.json` (parameters and statistics) and a short `README.md`.
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
from tqdm import tqdm

from hin.data.coco import CAPTION_FILES, PART_ID_FILES, SPLIT_ID_FILES
from hin.data.errors import DataError
from hin.data.features import feature_key
from hin.data.vocab import Vocabulary, tokenize

GRID_FILE = "grid.hdf5"
REGION_FILE = "region.hdf5"
VOCAB_FILE = "vocab.json"
MANIFEST_FILE = "manifest.json"
README_FILE = "README.md"
OUTPUT_FILES = (*CAPTION_FILES, *(name for names in SPLIT_ID_FILES.values() for name in names),
                GRID_FILE, REGION_FILE, VOCAB_FILE, MANIFEST_FILE, README_FILE)

CANVAS = 64
GRID_SIDE = 4
GRID_POOL = 4
CROP_SIDE = 8
REGION_DESCRIPTOR = CROP_SIDE ** 2 * 3 + 3 + 7 + 6 + 1  # crop, mean colour, box, bumps, 1
GRID_DIM = 1024
REGION_DIM = 2048
PROJECTION_SEED = 20240601
FEATURE_NOISE = 0.02
FEATURE_CHUNK = 250
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

    def box(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) in pixels, clipped to the canvas."""
        low, high = 0.0, float(CANVAS)
        return (max(self.cx - self.radius, low), max(self.cy - self.radius, low),
                min(self.cx + self.radius, high), min(self.cy + self.radius, high))


def random_scene(rng: np.random.Generator) -> list[SceneObject]:
    count = int(rng.choice(len(OBJECT_COUNT_PROBABILITIES), p=OBJECT_COUNT_PROBABILITIES)) + 1
    cell = CANVAS / 3
    objects = []
    for index in rng.choice(9, size=count, replace=False):
        row, col = divmod(int(index), 3)
        large = bool(rng.random() < 0.5)
        objects.append(SceneObject(
            colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(SHAPES)), large=large,
            row=row, col=col,
            cx=float((col + 0.5) * cell + rng.uniform(-2.5, 2.5)),
            cy=float((row + 0.5) * cell + rng.uniform(-2.5, 2.5)),
            radius=float((9.0 if large else 5.0) + rng.uniform(-0.7, 0.7))))
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


def _ink(picture: np.ndarray) -> np.ndarray:
    """Pixels as 'ink' in [0, 1]: white background is 0, so empty patches carry no signal."""
    return (255.0 - picture.astype(np.float32)) / 255.0


def grid_descriptors(picture: np.ndarray) -> np.ndarray:
    """[GRID_SIDE², pooled RGB + patch one-hot]: what the grid projection sees."""
    patch = CANVAS // GRID_SIDE
    ink = _ink(picture).reshape(GRID_SIDE, GRID_POOL, patch // GRID_POOL,
                                GRID_SIDE, GRID_POOL, patch // GRID_POOL, 3)
    pooled = ink.mean(axis=(2, 5)).transpose(0, 2, 1, 3, 4).reshape(GRID_SIDE ** 2, -1)
    return np.concatenate([pooled, np.eye(GRID_SIDE ** 2, dtype=np.float32)], axis=1)


def region_descriptors(picture: np.ndarray, objects: Sequence[SceneObject]) -> np.ndarray:
    """[objects, REGION_DESCRIPTOR]: what the region projection sees, like a detector's output:
    the object's crop (8x8 RGB ink), its mean colour, its box, and smooth position bumps."""
    ink = _ink(picture)
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS] + 0.5
    centres = (np.arange(3) + 0.5) / 3
    rows = []
    for obj in objects:
        x1, y1, x2, y2 = obj.box()
        steps = (np.arange(CROP_SIDE) + 0.5) / CROP_SIDE
        cols = np.clip((x1 + steps * (x2 - x1)).astype(int), 0, CANVAS - 1)
        lines = np.clip((y1 + steps * (y2 - y1)).astype(int), 0, CANVAS - 1)
        crop = ink[np.ix_(lines, cols)].reshape(-1)
        colour = ink[_shape_mask(obj, xs, ys)].mean(axis=0)
        geometry = np.array([x1, y1, x2, y2, obj.cx, obj.cy, 2 * obj.radius]) / CANVAS
        bumps = np.exp(-((np.array([obj.cx, obj.cy])[:, None] / CANVAS - centres) ** 2) / 0.02)
        rows.append(np.concatenate([crop, colour, geometry, bumps.reshape(-1), [1.0]]))
    return np.asarray(rows, dtype=np.float32)


def _projections() -> tuple[np.ndarray, np.ndarray]:
    """The fixed 'feature extractor': the same random matrices for every dataset seed."""
    rng = np.random.default_rng(PROJECTION_SEED)
    grid_in = GRID_POOL ** 2 * 3 + GRID_SIDE ** 2
    region_in = REGION_DESCRIPTOR
    grid = rng.standard_normal((grid_in, GRID_DIM), dtype=np.float32) / np.float32(np.sqrt(grid_in))
    region = rng.standard_normal((region_in, REGION_DIM), dtype=np.float32) / np.float32(
        np.sqrt(region_in))
    return grid, region


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
        folder = "train2014" if self.caption_file == CAPTION_FILES[0] else "val2014"
        return f"SYNTH_{folder}_{self.image_id:012d}.png"


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
    _write_features(out, images, rng, progress)
    vocab = Vocabulary.build((caption for image in images if image.split != "test"
                              for caption in image.captions), min_freq=min_freq)
    vocab.save(out / VOCAB_FILE)
    manifest = _manifest(images, annotation_ids, vocab, seed, min_freq, restval_fraction)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / README_FILE).write_text(_readme(manifest), encoding="utf-8")
    return manifest


def _write_annotations(out: Path, images: list[_Image]) -> dict[str, list[int]]:
    """COCO caption files + Karpathy id arrays; returns the annotation ids per split file."""
    ids_per_file: dict[str, list[int]] = {name: [] for name in PART_ID_FILES.values()}
    contents = {name: {"info": {"description": "hin synthetic shapes captions", "version": "1.0"},
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
        (out / name).write_text(json.dumps(content) + "\n", encoding="utf-8")
    for name, ids in ids_per_file.items():
        np.save(out / name, np.asarray(ids, dtype=np.int64))
    return ids_per_file


def _write_features(out: Path, images: list[_Image], rng: np.random.Generator,
                    progress: bool) -> None:
    """Project and write features a chunk of images at a time (one large matmul is far faster
    than thousands of small ones interleaved with file writes)."""
    grid_projection, region_projection = _projections()
    bar = tqdm(total=len(images), desc="writing synthetic features", unit="image",
               disable=not progress)
    with h5py.File(out / GRID_FILE, "w") as grid_file, \
            h5py.File(out / REGION_FILE, "w") as region_file, bar:
        for start in range(0, len(images), FEATURE_CHUNK):
            chunk = images[start:start + FEATURE_CHUNK]
            pictures = [render(image.objects) for image in chunk]
            grids = np.stack([grid_descriptors(picture) for picture in pictures]) @ grid_projection
            regions = np.concatenate([
                region_descriptors(picture, image.objects)
                for picture, image in zip(pictures, chunk)]) @ region_projection
            grids += rng.normal(0.0, FEATURE_NOISE, grids.shape).astype(np.float32)
            regions += rng.normal(0.0, FEATURE_NOISE, regions.shape).astype(np.float32)
            grids, regions = grids.astype(np.float16), regions.astype(np.float16)
            first_region = 0
            for image, grid in zip(chunk, grids):
                image_regions = regions[first_region:first_region + len(image.objects)]
                first_region += len(image.objects)
                _write_image(grid_file, region_file, image, grid, image_regions)
            bar.update(len(chunk))


def _write_image(grid_file: h5py.File, region_file: h5py.File, image: _Image, grid: np.ndarray,
                 regions: np.ndarray) -> None:
    """One image's entries in the released layout (`<id>_features`, `_boxes`, `_size`, ...)."""
    key = feature_key(image.image_id)
    grid_file.create_dataset(key, data=grid)
    region_file.create_dataset(key, data=regions)
    region_file.create_dataset(f"{image.image_id}_boxes",
                               data=np.array([obj.box() for obj in image.objects], np.float32))
    region_file.create_dataset(f"{image.image_id}_size", data=np.array([CANVAS, CANVAS], np.int64))
    region_file.create_dataset(f"{image.image_id}_cls_prob",
                               data=_class_probabilities(image.objects))


def _class_probabilities(objects: Sequence[SceneObject]) -> np.ndarray:
    """Detector-style confidence of each region's class [n], as VinVL's `conf` (the layout
    every region file shares: one score per region)."""
    return np.full(len(objects), 1.0 - 0.02 * len(SHAPES), dtype=np.float32)


def _manifest(images: list[_Image], annotation_ids: dict[str, list[int]], vocab: Vocabulary,
              seed: int, min_freq: int, restval_fraction: float) -> dict[str, Any]:
    splits = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
    statistics = {}
    for name, members in splits.items():
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
        "format": "hin-synthetic", "version": 1, "seed": seed,
        "annotations": {"caption_files": list(CAPTION_FILES),
                        "split_id_files": {name: len(ids) for name, ids in annotation_ids.items()},
                        "restval_fraction": restval_fraction},
        "features": {"grid_file": GRID_FILE, "grid_shape": [GRID_SIDE ** 2, GRID_DIM],
                     "region_file": REGION_FILE, "region_dim": REGION_DIM, "dtype": "float16",
                     "projection_seed": PROJECTION_SEED, "noise_std": FEATURE_NOISE},
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
        f"grid features `{GRID_FILE}` ({manifest['features']['grid_shape']} per image, fp16), "
        f"region features `{REGION_FILE}` (one {REGION_DIM}-d row per object, with boxes, "
        f"size, cls_prob) and the vocabulary `{VOCAB_FILE}` ({manifest['vocabulary']['size']} "
        "entries).",
        "",
        "| split | images | captions | distinct captions | most frequent caption share |",
        "|---|---|---|---|---|",
    ]
    for name, stats in manifest["splits"].items():
        lines.append(f"| {name} | {stats['images']} | {stats['captions']} | "
                     f"{stats['distinct_captions']} | {stats['most_frequent_caption_share']:.2%} |")
    lines += ["", f"All parameters and statistics: `{MANIFEST_FILE}`.", ""]
    return "\n".join(lines)
