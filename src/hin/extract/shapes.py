"""The synthetic world's feature extractor, pixels in, features out (plain NumPy), registered
as `synth-grid` and `synth-regions`.

It is what `hin data synth` writes for every scene it draws and what the registered
extractors compute for any picture, so a model trained on the synthetic world captions and
explains a picture drawn in a paint program, and `synth-regions` gives region boxes for any
picture with a plain background. `device` and `precision` are accepted for the common
extractor interface and unused.

- The picture is resized as a whole (no crop) to `canvas` x `canvas` pixels; the world's own
  pictures already have that size and are used as they are. 'Ink' is 1 - RGB/255: a white
  background carries no signal.
- Grid: `grid_side` x `grid_side` cells tile the whole picture (row-major; recorded as the
  file attributes `grid_rows`/`grid_cols` and per image `crop` = 0 0 W H): cell (row, col) of
  a W x H picture covers x in [col·W/cols, (col+1)·W/cols) and y in [row·H/rows, (row+1)·H/rows).
  Each cell's ink pooled to `pool` x `pool`, plus its row and column one-hots, goes through
  a fixed random projection (the same for every picture) to `grid_dim` values.
- Regions: the objects in the picture, found as 8-connected components of pixels that differ
  from the background colour by more than `tolerance` in some channel (components under
  `min_pixels` are specks and dropped; the `max_regions` largest are kept, in reading order).
  Each one's 8x8 ink crop sampled over its box, mean ink, box, centre, size and position
  bumps go through a second fixed projection to `region_dim` values. Boxes are x1 y1 x2 y2
  in pixels of the original picture.
Every picture gets the same arithmetic one at a time (float32 projections, stored as
float16), so the same pixels always give the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import cached_property

import numpy as np
from PIL import Image

from hin.data.errors import DataError
from hin.data.features import GRID_COLS, GRID_ROWS
from hin.errors import UsageError
from hin.extract.registry import ImageEntry, register_extractor

CANVAS = 96
GRID_SIDE = 8
POOL = 4
CROP_SIDE = 8
GRID_DIM = 128
REGION_DIM = 256
PROJECTION_SEED = 20240601
BACKGROUND = "#ffffff"
TOLERANCE = 48
MIN_PIXELS = 8
MAX_REGIONS = 16
GRID_EXTRACTOR = "synth-grid"
REGION_EXTRACTOR = "synth-regions"
LAYOUT_CENTRES = (np.arange(3) + 0.5) / 3      # the 3x3 layout the world's captions describe


@dataclass(frozen=True)
class PreparedPicture:
    """A picture resized to the canvas, and the size it had (to map boxes back)."""

    pixels: np.ndarray          # uint8 [canvas, canvas, 3]
    width: int
    height: int


@dataclass(frozen=True)
class Regions:
    features: np.ndarray        # float16 [n, region_dim]
    boxes: np.ndarray           # float32 [n, 4]: x1 y1 x2 y2 in pixels of the original picture


@dataclass(frozen=True)
class Component:
    """One object found in a canvas-sized picture: its pixels and bounding box (canvas px)."""

    mask: np.ndarray            # bool [canvas, canvas]
    box: tuple[int, int, int, int]

    @property
    def pixels(self) -> int:
        return int(self.mask.sum())


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#rrggbb' -> (r, g, b)."""
    digits = text.removeprefix("#")
    if len(digits) != 6 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise DataError(f"background colour must be written #rrggbb, got {text!r}")
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a bool image -> int32 labels (0 background, 1.. in reading
    order of each component's first pixel). Runs of each row are joined with a union-find,
    so the Python work grows with the number of runs, not of pixels."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(steps == 1)
    _, run_ends = np.nonzero(steps == -1)                # both in row-major order, paired
    parent = list(range(len(run_rows)))

    def root(run: int) -> int:
        while parent[run] != run:
            parent[run] = parent[parent[run]]
            run = parent[run]
        return run

    previous_row: list[int] = []
    current_row: list[int] = []
    row = -1
    for run in range(len(run_rows)):
        if run_rows[run] != row:
            previous_row = current_row if run_rows[run] == row + 1 else []
            current_row, row = [], int(run_rows[run])
        for above in previous_row:                       # diagonal contact counts (8-connected)
            if run_starts[above] <= run_ends[run] and run_starts[run] <= run_ends[above]:
                low, high = sorted((root(above), root(run)))
                parent[high] = low
        current_row.append(run)
    labels = np.zeros((height, width), dtype=np.int32)
    numbers: dict[int, int] = {}
    for run in range(len(run_rows)):
        number = numbers.setdefault(root(run), len(numbers) + 1)
        labels[run_rows[run], run_starts[run]:run_ends[run]] = number
    return labels


@dataclass(frozen=True)
class ShapeFeatures:
    """The extractor's settings; `attributes()` records them in feature files and checkpoints."""

    canvas: int = CANVAS
    grid_side: int = GRID_SIDE
    grid_dim: int = GRID_DIM
    region_dim: int = REGION_DIM
    projection_seed: int = PROJECTION_SEED
    background: str = BACKGROUND
    tolerance: int = TOLERANCE
    min_pixels: int = MIN_PIXELS
    max_regions: int = MAX_REGIONS

    def __post_init__(self) -> None:
        if self.canvas % (self.grid_side * POOL):
            raise DataError(f"canvas {self.canvas} must be a multiple of grid_side x {POOL} "
                            f"({self.grid_side * POOL})")
        if min(self.grid_dim, self.region_dim, self.min_pixels, self.max_regions) < 1:
            raise DataError("grid_dim, region_dim, min_pixels and max_regions must be positive")
        parse_colour(self.background)

    @cached_property
    def background_rgb(self) -> tuple[int, int, int]:
        return parse_colour(self.background)

    @property
    def grid_descriptor_dim(self) -> int:
        return POOL * POOL * 3 + 2 * self.grid_side

    @property
    def region_descriptor_dim(self) -> int:
        return CROP_SIDE * CROP_SIDE * 3 + 3 + 7 + 6 + 1   # crop, mean ink, geometry, bumps, 1

    @cached_property
    def projections(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed 'feature extractor': the same random matrices for every picture."""
        rng = np.random.default_rng(self.projection_seed)
        grid_in, region_in = self.grid_descriptor_dim, self.region_descriptor_dim
        grid = rng.standard_normal((grid_in, self.grid_dim), dtype=np.float32)
        region = rng.standard_normal((region_in, self.region_dim), dtype=np.float32)
        return grid / np.float32(np.sqrt(grid_in)), region / np.float32(np.sqrt(region_in))

    def prepare(self, picture: Image.Image) -> PreparedPicture:
        """RGB picture of any size -> canvas-sized pixels (area-averaged when shrinking)."""
        picture = picture.convert("RGB")
        width, height = picture.size
        if picture.size != (self.canvas, self.canvas):
            picture = picture.resize((self.canvas, self.canvas), Image.Resampling.BOX)
        return PreparedPicture(np.asarray(picture, dtype=np.uint8).copy(), width, height)

    def grid(self, pixels: np.ndarray) -> np.ndarray:
        """float16 [grid_side², grid_dim]: cells in row-major order."""
        side, cell = self.grid_side, self.canvas // self.grid_side
        ink = _ink(pixels).reshape(side, POOL, cell // POOL, side, POOL, cell // POOL, 3)
        pooled = ink.mean(axis=(2, 5)).transpose(0, 2, 1, 3, 4).reshape(side * side, -1)
        rows, cols = np.divmod(np.arange(side * side), side)
        eye = np.eye(side, dtype=np.float32)
        descriptors = np.concatenate([pooled, eye[rows], eye[cols]], axis=1)
        return (descriptors @ self.projections[0]).astype(np.float16)

    def components(self, pixels: np.ndarray) -> list[Component]:
        """The objects: large enough components, the `max_regions` largest, in reading order."""
        difference = np.abs(pixels.astype(np.int16) - np.asarray(self.background_rgb, np.int16))
        labels = connected_components(difference.max(axis=-1) > self.tolerance)
        found = []
        for number in range(1, int(labels.max()) + 1):
            mask = labels == number
            if mask.sum() < self.min_pixels:
                continue
            rows, cols = np.nonzero(mask)
            found.append(Component(mask, (int(cols.min()), int(rows.min()),
                                          int(cols.max()) + 1, int(rows.max()) + 1)))
        if len(found) > self.max_regions:
            largest = sorted(range(len(found)), key=lambda i: -found[i].pixels)[:self.max_regions]
            found = [found[i] for i in sorted(largest)]
        return found

    def regions(self, picture: PreparedPicture) -> Regions:
        """Region features and boxes (pixels of the original picture) of every object found."""
        components = self.components(picture.pixels)
        if not components:
            return Regions(np.zeros((0, self.region_dim), np.float16), np.zeros((0, 4), np.float32))
        ink = _ink(picture.pixels)
        descriptors = np.stack([self._region_descriptor(ink, c) for c in components])
        boxes = np.array([c.box for c in components], dtype=np.float32)
        scale = np.array([picture.width, picture.height] * 2, dtype=np.float32) / self.canvas
        return Regions((descriptors @ self.projections[1]).astype(np.float16), boxes * scale)

    def _region_descriptor(self, ink: np.ndarray, component: Component) -> np.ndarray:
        x1, y1, x2, y2 = component.box
        steps = (np.arange(CROP_SIDE) + 0.5) / CROP_SIDE
        cols = np.clip((x1 + steps * (x2 - x1)).astype(int), 0, self.canvas - 1)
        rows = np.clip((y1 + steps * (y2 - y1)).astype(int), 0, self.canvas - 1)
        crop = ink[np.ix_(rows, cols)].reshape(-1)
        colour = ink[component.mask].mean(axis=0)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        geometry = np.array([x1, y1, x2, y2, cx, cy, max(x2 - x1, y2 - y1)]) / self.canvas
        bumps = np.exp(-((np.array([cx, cy])[:, None] / self.canvas - LAYOUT_CENTRES) ** 2) / 0.02)
        return np.concatenate([crop, colour, geometry, bumps.reshape(-1), [1.0]]).astype(np.float32)

    def grid_entry(self, picture: PreparedPicture) -> dict[str, np.ndarray]:
        """What a grid feature file holds for the picture: `features`, its `size` (height,
        width) and `crop`, the part of it the cells divide evenly (all of it, x1 y1 x2 y2)."""
        return {"features": self.grid(picture.pixels),
                "size": np.array([picture.height, picture.width], dtype=np.int64),
                "crop": np.array([0, 0, picture.width, picture.height], dtype=np.float32)}

    def region_entry(self, picture: PreparedPicture) -> dict[str, np.ndarray]:
        """What a region feature file holds: features, boxes, size (height, width), cls_prob
        (1: a component is an object for certain)."""
        regions = self.regions(picture)
        return {"features": regions.features, "boxes": regions.boxes,
                "size": np.array([picture.height, picture.width], dtype=np.int64),
                "cls_prob": np.ones(len(regions.boxes), dtype=np.float32)}

    def grid_attributes(self) -> dict[str, object]:
        """Recorded in grid feature files (and so in checkpoints): rebuilds the extractor."""
        return {"extractor": GRID_EXTRACTOR, "kind": "grid", "feature_dim": self.grid_dim,
                "tokens": self.grid_side ** 2, **self.settings()}

    def region_attributes(self) -> dict[str, object]:
        return {"extractor": REGION_EXTRACTOR, "kind": "region", "feature_dim": self.region_dim,
                **self.settings()}

    def settings(self) -> dict[str, object]:
        """Plain scalars (HDF5 attributes and checkpoints keep them as they are)."""
        return {"canvas": self.canvas, GRID_ROWS: self.grid_side, GRID_COLS: self.grid_side,
                "grid_dim": self.grid_dim, "region_dim": self.region_dim,
                "projection_seed": self.projection_seed, "background": self.background,
                "tolerance": self.tolerance, "min_pixels": self.min_pixels,
                "max_regions": self.max_regions}

    @classmethod
    def from_attributes(cls, recorded: dict[str, object]) -> ShapeFeatures:
        """The settings recorded by `grid_attributes()` or `region_attributes()`."""
        missing = [key for key in cls().settings() if key not in recorded]
        if missing:
            raise DataError(f"the recorded synthetic extractor settings lack {missing}; the "
                            "features were written by another hin version: regenerate them "
                            "with `hin data synth --force`")
        if recorded.get(GRID_ROWS) != recorded.get(GRID_COLS):
            raise DataError(f"synthetic features need a square grid, the file records "
                            f"{recorded.get(GRID_ROWS)} x {recorded.get(GRID_COLS)}")
        return cls(canvas=int(recorded["canvas"]), grid_side=int(recorded[GRID_ROWS]),
                   grid_dim=int(recorded["grid_dim"]), region_dim=int(recorded["region_dim"]),
                   projection_seed=int(recorded["projection_seed"]),
                   background=str(recorded["background"]), tolerance=int(recorded["tolerance"]),
                   min_pixels=int(recorded["min_pixels"]),
                   max_regions=int(recorded["max_regions"]))


def _ink(pixels: np.ndarray) -> np.ndarray:
    """Pixels as 'ink' in [0, 1]: white is 0, so empty cells carry no signal."""
    return (255.0 - pixels.astype(np.float32)) / np.float32(255.0)


class _ShapeExtractor:
    name: str
    kind: str

    def __init__(self, device: str = "auto", precision: str = "fp32", **settings: object) -> None:
        known = [f.name for f in fields(ShapeFeatures)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise UsageError(f"the {self.name} extractor has no option {', '.join(unknown)}; "
                             f"its options: {', '.join(known)}")
        self.features = ShapeFeatures(**settings)
        self.preprocess = self.features.prepare

    @classmethod
    def from_attributes(cls, recorded: dict[str, object], device: str = "auto",
                        precision: str = "fp32") -> _ShapeExtractor:
        """The extractor that wrote a file with these attributes (see `attributes`)."""
        return cls(**asdict(ShapeFeatures.from_attributes(recorded)))


@register_extractor(GRID_EXTRACTOR)
class ShapeGridExtractor(_ShapeExtractor):
    """Grid cells computed from the pixels: `features` [cells, grid_dim] fp16."""

    kind = "grid"

    @property
    def feature_dim(self) -> int:
        return self.features.grid_dim

    def attributes(self) -> dict[str, object]:
        return self.features.grid_attributes()

    def __call__(self, prepared: Sequence[PreparedPicture]) -> list[ImageEntry]:
        return [self.features.grid_entry(picture) for picture in prepared]


@register_extractor(REGION_EXTRACTOR)
class ShapeRegionExtractor(_ShapeExtractor):
    """One region per object found in the picture: features, boxes (picture pixels), size."""

    kind = "region"

    @property
    def feature_dim(self) -> int:
        return self.features.region_dim

    def attributes(self) -> dict[str, object]:
        return self.features.region_attributes()

    def __call__(self, prepared: Sequence[PreparedPicture]) -> list[ImageEntry]:
        return [self.features.region_entry(picture) for picture in prepared]
