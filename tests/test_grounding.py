"""Grounding measures on hand-made maps and boxes: a 4x4 picture cut into 2x2 cells."""

import numpy as np
import pytest

from hin.data.features import ImageGeometry
from hin.errors import UsageError
from hin.explain import ImageExplanation, ModelView
from hin.grounding import box_mass, covered_area, measure, point

CELLS = np.array([[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 2, 4], [2, 2, 4, 4]], dtype=float)
CIRCLE, SQUARE = (0, 0, 2, 2), (2, 1, 4, 4)        # cell centres: (1,1) (3,1) (1,3) (3,3)
OBJECTS = [("circle", CIRCLE), ("square", SQUARE)]


def test_covered_area_counts_overlaps_once_and_clips_to_the_window():
    assert covered_area([(0, 0, 2, 2), (1, 1, 3, 3)], (0, 0, 10, 10)) == 7
    assert covered_area([(0, 0, 2, 2), (1, 1, 3, 3)], (0, 0, 2, 3)) == 5
    assert covered_area([(5, 5, 6, 6)], (0, 0, 2, 2)) == 0
    assert covered_area([], (0, 0, 2, 2)) == 0


def test_pointing_game_hits_misses_and_chance():
    maps = np.array([[0.7, 0.1, 0.1, 0.1],      # "a": names nothing
                     [0.4, 0.3, 0.2, 0.1],      # "circle": peak in cell 0, the circle's -> hit
                     [0.5, 0.2, 0.2, 0.1],      # "square": peak in cell 0, not the square's
                     [0.1, 0.1, 0.1, 0.7]])     # "ring": no ring in the picture
    result = point(maps, ["a", "circle", "square", "ring"], OBJECTS, CELLS)
    assert [(r.word, r.hit, r.chance, r.area_share) for r in result] == [
        ("circle", True, 0.25, 0.25), ("square", False, 0.5, 0.375)]
    two_squares = OBJECTS + [("square", (0, 2, 1, 3))]     # holds no cell centre, adds area 1
    result = point(maps[2:3], ["square"], two_squares, CELLS)
    assert [(r.hit, r.chance, r.area_share) for r in result] == [(False, 0.5, 7 / 16)]


def test_box_mass_weighs_cells_by_the_fraction_the_boxes_cover():
    mass, share = box_mass(np.array([0.1, 0.2, 0.3, 0.4]), [CIRCLE, SQUARE], CELLS)
    assert mass == pytest.approx(0.1 * 1 + 0.2 * 0.5 + 0.3 * 0 + 0.4 * 1)
    assert share == 10 / 16
    uniform, _ = box_mass(np.full(4, 0.25), [CIRCLE, SQUARE], CELLS)
    assert uniform == pytest.approx(share)          # attention spread evenly scores the area share


def _explanation(image_id, words, word_maps, grid_map):
    geometry = ImageGeometry(image_id, (4, 4), (2, 2), (0.0, 0.0, 4.0, 4.0), None)
    view = ModelView("xe/best.pt", " ".join(words), tuple(words), np.asarray(grid_map),
                     np.zeros(0), geometry, word_maps=np.asarray(word_maps))
    return ImageExplanation(str(image_id), image_id, None, (view,))


def test_measure_over_images():
    explanations = [
        _explanation(1, ["a", "circle"], [[0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.0, 0.0]],
                     [0.1, 0.2, 0.3, 0.4]),
        _explanation(2, ["square", "circle"], [[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]],
                     [0.0, 0.0, 0.0, 1.0])]
    objects = {1: OBJECTS, 2: OBJECTS}
    grounding = measure(explanations, objects)
    assert (grounding.label, grounding.images, grounding.words, grounding.hits) == ("xe/best.pt", 2, 3, 2)
    assert grounding.hit_rate == pytest.approx(2 / 3)
    assert grounding.pointing_chance == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    assert grounding.pointing_area_share == pytest.approx((0.25 + 0.375 + 0.25) / 3)
    assert grounding.mass_on_boxes == pytest.approx((0.6 + 1.0) / 2)
    assert grounding.box_area_share == 10 / 16
    assert "pointing game 66.7% of 3 object words (chance 33.3%" in grounding.summary()
    no_words = [ImageExplanation("1", 1, None, (ModelView("m", "", (), np.zeros(4), np.zeros(0),
                                                          explanations[0].views[0].geometry),))]
    with pytest.raises(UsageError, match="words='grid'"):
        measure(no_words, objects)
