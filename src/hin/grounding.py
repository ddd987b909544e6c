"""Is the model looking at the right thing? Attention maps measured against known object boxes.

Two measures, each next to what attention spread without looking would score:
- pointing game: for every generated word that names an object present in the picture, is
  the peak of the decoder's grid attention while it produced that word (mean over layers
  and heads) on that object? The peak cell counts as a hit when its centre lies inside a box
  of an object with that name. Chance: the share of cells whose centre lies inside those
  boxes (a peak at a uniformly random cell hits that often; close to the boxes' share of
  the picture's area, which is reported too).
- box mass: the share of the encoder's global grid token's attention (mean over layers and
  heads) that falls on object boxes, each cell's weight counted by the fraction of the cell
  the boxes cover. Chance: the boxes' share of the picture's area (uniform attention over
  cells that tile the picture gets exactly that). The global region token is not measured:
  where the regions are the objects, all its mass is on them by construction.
Boxes are x1 y1 x2 y2 in picture pixels, cells as `ImageGeometry.cell_boxes()` gives them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hin.errors import UsageError
from hin.explain import ImageExplanation

Box = Sequence[float]
NamedBox = tuple[str, Box]


def covered_area(boxes: Sequence[Box], window: Box) -> float:
    """Area of the union of `boxes` inside `window` (exact: the plane is cut at every edge)."""
    wx1, wy1, wx2, wy2 = window
    clipped = [(max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)) for x1, y1, x2, y2 in boxes]
    clipped = [b for b in clipped if b[0] < b[2] and b[1] < b[3]]
    if not clipped:
        return 0.0
    xs = sorted({x for b in clipped for x in (b[0], b[2])})
    ys = sorted({y for b in clipped for y in (b[1], b[3])})
    area = 0.0
    for left, right in zip(xs, xs[1:]):
        for top, bottom in zip(ys, ys[1:]):
            if any(b[0] <= left and right <= b[2] and b[1] <= top and bottom <= b[3] for b in clipped):
                area += (right - left) * (bottom - top)
    return area


def _area(box: Box) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _centres_inside(cells: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """bool [cells]: the cell's centre lies inside one of the boxes (left/top edges included)."""
    cx, cy = (cells[:, 0] + cells[:, 2]) / 2, (cells[:, 1] + cells[:, 3]) / 2
    inside = np.zeros(len(cells), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        inside |= (x1 <= cx) & (cx < x2) & (y1 <= cy) & (cy < y2)
    return inside


@dataclass(frozen=True)
class WordPointing:
    """One named word: did its peak land on the object, and the chance of that."""

    word: str
    hit: bool
    chance: float              # share of cells whose centre is inside the object's boxes
    area_share: float          # the boxes' share of the picture


def point(word_maps: np.ndarray, words: Sequence[str], objects: Sequence[NamedBox],
          cells: np.ndarray) -> list[WordPointing]:
    """Pointing game for one caption: word_maps [words, cells] (rows follow `words`), the
    picture's objects as (name, box), cells [cells, 4] tiling the picture."""
    picture = (cells[:, 0].min(), cells[:, 1].min(), cells[:, 2].max(), cells[:, 3].max())
    results = []
    for word, weights in zip(words, word_maps):
        boxes = [box for name, box in objects if name == word]
        if not boxes:
            continue
        inside = _centres_inside(cells, boxes)
        results.append(WordPointing(word, bool(inside[int(np.argmax(weights))]),
                                    float(inside.mean()),
                                    covered_area(boxes, picture) / _area(picture)))
    return results


def box_mass(weights: np.ndarray, boxes: Sequence[Box], cells: np.ndarray) -> tuple[float, float]:
    """(share of the attention `weights` [cells] on the boxes, the boxes' share of the picture)."""
    picture = (cells[:, 0].min(), cells[:, 1].min(), cells[:, 2].max(), cells[:, 3].max())
    covered = np.array([covered_area(boxes, cell) / _area(cell) for cell in cells])
    return float(weights @ covered / weights.sum()), covered_area(boxes, picture) / _area(picture)


@dataclass(frozen=True)
class Grounding:
    """One model over a set of images: pointing game and encoder box mass, with chance."""

    label: str
    images: int
    words: int                      # generated words naming an object in the picture
    hits: int
    pointing_chance: float          # mean over those words of the per-word chance
    pointing_area_share: float
    mass_on_boxes: float            # mean over images
    box_area_share: float

    @property
    def hit_rate(self) -> float:
        return self.hits / self.words if self.words else float("nan")

    def summary(self) -> str:
        return (f"{self.label}: pointing game {self.hit_rate:.1%} of {self.words} object words "
                f"(chance {self.pointing_chance:.1%}, boxes' area {self.pointing_area_share:.1%}); "
                f"global grid token mass on object boxes {self.mass_on_boxes:.1%} "
                f"(boxes' area {self.box_area_share:.1%}), {self.images} images")


def measure(explanations: Sequence[ImageExplanation], objects: Mapping[int, Sequence[NamedBox]],
            column: int = 0) -> Grounding:
    """Grounding of the model in view `column` of explanations made with per-word grid maps
    and the mean over layers (`hin.explain.explain(..., words="grid", layer=None)`);
    `objects[image_id]`: the picture's objects as (name, box)."""
    pointed: list[WordPointing] = []
    masses, shares = [], []
    label = ""
    for explanation in explanations:
        view = explanation.views[column]
        label = view.label
        if view.word_maps is None or view.word_source != "grid":
            raise UsageError("grounding needs per-word grid maps: explain(..., words='grid')")
        if explanation.image_id is None:
            raise UsageError("grounding looks the pictures' objects up by image id; these "
                             "explanations were made from pictures without one")
        cells = view.geometry.cell_boxes()
        scene = objects[explanation.image_id]
        pointed += point(view.word_maps, view.words, scene, cells)
        mass, share = box_mass(view.grid_map, [box for _, box in scene], cells)
        masses.append(mass)
        shares.append(share)
    return Grounding(label, len(masses), len(pointed), sum(p.hit for p in pointed),
                     float(np.mean([p.chance for p in pointed])) if pointed else float("nan"),
                     float(np.mean([p.area_share for p in pointed])) if pointed else float("nan"),
                     float(np.mean(masses)), float(np.mean(shares)))
