"""Where an image's grid cells and regions lie on its picture, as the feature files record it.

The grid file's attributes `hin_grid_rows`, `hin_grid_cols` (tokens in row-major order) and per
image `<image_id>_size` (h, w) and `<image_id>_crop` (x1, y1, x2, y2: the part of the picture,
in its pixels, that the grid's cells divide evenly); the region file's `<image_id>_boxes`
(x1, y1, x2, y2 in picture pixels) and `<image_id>_size`. Extractors hand over the same
entries straight (`hin explain` on pictures). Whatever a source does not record is reported as
missing, never assumed: a figure then says what it cannot place instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hin.data.errors import DataError

ATTRIBUTE_PREFIX = "hin_"       # every attribute hin writes on a feature file starts so
GRID_ROWS, GRID_COLS = "grid_rows", "grid_cols"     # grid file attributes (with ATTRIBUTE_PREFIX)
GEOMETRY_SUFFIXES = ("size", "crop", "boxes")


@dataclass(frozen=True)
class ImageGeometry:
    """Where one image's grid cells and regions lie on its picture (pixels; see module docstring).

    A field is None where the feature files do not record it; `missing` then says what cannot
    be placed and why, naming the file, so a figure can say so instead of guessing.
    """

    image_id: int | str                                   # or the picture's name
    size: tuple[int, int] | None                          # (height, width) of the picture
    grid_layout: tuple[int, int] | None                   # (rows, cols)
    grid_box: tuple[float, float, float, float] | None    # x1, y1, x2, y2 covered by the grid
    boxes: np.ndarray | None                              # [n, 4] x1, y1, x2, y2
    missing: tuple[str, ...] = ()

    @property
    def grid_placement(self) -> tuple[tuple[int, int], tuple[float, float, float, float]] | None:
        """(grid_layout, grid_box) when both are known: the grid's cells can be drawn on the
        picture; else None."""
        if self.grid_layout is None or self.grid_box is None:
            return None
        return self.grid_layout, self.grid_box

    def cell_boxes(self) -> np.ndarray:
        """[rows·cols, 4] picture-pixel box of every grid token, row-major."""
        placement = self.grid_placement
        if placement is None:
            raise DataError(f"image {self.image_id}: the grid cannot be placed on the picture: "
                            + "; ".join(self.missing))
        (rows, cols), (x1, y1, x2, y2) = placement
        xs, ys = np.linspace(x1, x2, cols + 1), np.linspace(y1, y2, rows + 1)
        row, col = np.divmod(np.arange(rows * cols), cols)
        return np.stack((xs[col], ys[row], xs[col + 1], ys[row + 1]), axis=1)


def describe_geometry(image_id: int | str, grid_attributes: Mapping[str, Any],
                      grid_entry: Mapping[str, np.ndarray], region_entry: Mapping[str, np.ndarray],
                      grid_tokens: int | None, grid_source: str, region_source: str, *,
                      region_rows: int | None = None) -> ImageGeometry:
    """ImageGeometry from what a grid and a region source record for one image: the grid's
    attributes (`grid_rows`, `grid_cols`) and per-image arrays by suffix (`size`, `crop`,
    `boxes`), from feature files or straight from extractors. Sources name them in messages.
    `region_rows`, the image's number of region features, must equal its number of boxes
    (box i is where region i lies)."""
    missing = []
    sizes: dict[str, tuple[int, int]] = {}
    for source, entry in ((grid_source, grid_entry), (region_source, region_entry)):
        if "size" not in entry:
            continue
        value = [int(v) for v in np.asarray(entry["size"]).reshape(-1)]
        if len(value) != 2:
            missing.append(f"{source}: '{image_id}_size' holds {len(value)} values, expected 2 "
                           "(height, width)")
        else:
            sizes[source] = (value[0], value[1])
    size = next(iter(sizes.values()), None)
    if len(set(sizes.values())) > 1:
        missing.append(f"the picture sizes disagree ({'; '.join(f'{s}: {v}' for s, v in sizes.items())})")
        size = None
    elif size is None:
        missing.append(f"no picture size ('{image_id}_size') in {grid_source} or {region_source}")

    layout = None
    rows, cols = grid_attributes.get(GRID_ROWS), grid_attributes.get(GRID_COLS)
    if rows is None or cols is None:
        missing.append(f"{grid_source} does not record the grid layout "
                       f"({ATTRIBUTE_PREFIX}{GRID_ROWS}/{ATTRIBUTE_PREFIX}{GRID_COLS} attributes)")
    elif grid_tokens is not None and int(rows) * int(cols) != grid_tokens:
        missing.append(f"{grid_source} records a {rows}x{cols} grid but image {image_id} has "
                       f"{grid_tokens} grid tokens")
    else:
        layout = (int(rows), int(cols))
    grid_box = None
    if "crop" in grid_entry:
        crop = np.asarray(grid_entry["crop"], dtype=np.float64).reshape(-1)
        if crop.size == 4:
            x1, y1, x2, y2 = (float(v) for v in crop)
            grid_box = (x1, y1, x2, y2)
        else:
            missing.append(f"{grid_source}: '{image_id}_crop' holds {crop.size} values, expected 4 "
                           "(x1, y1, x2, y2)")
    else:
        missing.append(f"{grid_source} does not record which part of the picture the grid covers "
                       f"('{image_id}_crop')")

    boxes = None
    if "boxes" not in region_entry:
        missing.append(f"{region_source} has no region boxes ('{image_id}_boxes') for image {image_id}")
    else:
        boxes = np.asarray(region_entry["boxes"], dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            missing.append(f"{region_source}: '{image_id}_boxes' has shape {list(boxes.shape)}, "
                           "expected [n, 4] (x1, y1, x2, y2 per region)")
            boxes = None
        elif region_rows is not None and len(boxes) != region_rows:
            missing.append(f"{region_source} has {len(boxes)} boxes but {region_rows} region "
                           f"features for image {image_id}, so which box is which region is "
                           "unknown: re-extract the image's regions")
            boxes = None
        elif len(boxes) and not boxes.any():
            missing.append(f"{region_source} holds only all-zero boxes for image {image_id}")
            boxes = None
    return ImageGeometry(image_id, size, layout, grid_box, boxes, tuple(missing))
