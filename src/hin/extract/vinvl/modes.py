"""Which VinVL post-processing mode made a region feature file, told from its boxes.

Mode 2 (`nms_filter` 2) ends with one class-agnostic NMS at IoU 0.5, so two of its boxes
almost never overlap at IoU > 0.5 (almost: the NMS measured IoU with +1 in the network's
pixels, the file holds the boxes rescaled). Mode 1 only suppresses within a class, so boxes of
different classes on one object overlap freely: most pictures have such a pair. The verdict
needs no metadata: it works on the released files and on anyone's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hin.data.features import feature_ids, open_hdf5

OVERLAP = 0.5
MODE_2_MAX_SHARE = 0.01      # share of pictures with an overlapping pair that mode 2 allows


@dataclass(frozen=True)
class OverlapCount:
    images: int = 0
    images_overlapping: int = 0
    pairs: int = 0
    pairs_overlapping: int = 0

    def add(self, boxes: np.ndarray) -> OverlapCount:
        count = len(boxes)
        above = overlapping_pairs(boxes)
        return OverlapCount(self.images + 1, self.images_overlapping + int(above > 0),
                            self.pairs + count * (count - 1) // 2, self.pairs_overlapping + above)

    @property
    def mode(self) -> int:
        share = self.images_overlapping / self.images if self.images else 0.0
        return 2 if share <= MODE_2_MAX_SHARE else 1


def overlapping_pairs(boxes: np.ndarray) -> int:
    """Pairs of boxes (x1, y1, x2, y2) whose IoU exceeds 0.5; empty boxes overlap nothing."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    width = np.clip(np.minimum(b[:, None, 2], b[None, :, 2])
                    - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(b[:, None, 3], b[None, :, 3])
                     - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    union = areas[:, None] + areas[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return int(np.triu(iou > OVERLAP, k=1).sum())


def nms_mode_report(path: str | Path) -> str:
    """One line: how many pictures of a region file have two boxes at IoU > 0.5, and the mode
    that implies."""
    with open_hdf5(path) as handle:
        ids = sorted(feature_ids(handle))
        count = OverlapCount()
        for image_id in ids:
            name = f"{image_id}_boxes"
            if name not in handle:
                return (f"{path}: image {image_id} has no boxes ('{name}'): the VinVL mode can "
                        "only be told from a file with boxes")
            count = count.add(handle[name][()])
    if not count.images:
        return f"{path}: no images, so no VinVL mode to tell"
    described = {1: "nms_filter 1 (per-class NMS; mode 2 leaves almost no such pair)",
                 2: "nms_filter 2 (class-agnostic NMS at 0.5; mode 1 leaves such pairs in most "
                    "pictures)"}
    return (f"{path}: {count.images_overlapping} of {count.images} images "
            f"({count.pairs_overlapping} of {count.pairs} box pairs) have two boxes at IoU > "
            f"{OVERLAP}: made with {described[count.mode]}")
