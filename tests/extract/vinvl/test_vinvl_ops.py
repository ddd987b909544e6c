"""The VinVL port's box operations on edge cases: the legacy NMS rule (+1 areas, >= on ties,
ascending indices), per-class NMS equal to running the NMS class by class, ROIAlign against a
sample-by-sample transcription of the legacy rule (boxes outside the map, tiny, huge,
degenerate), the box coder's clamp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hin.errors import UsageError
from hin.extract.vinvl.ops import (
    class_nms_keep,
    clip_boxes,
    decode_boxes,
    iou_matrix,
    nms,
    roi_align,
)
from hin.extract.vinvl.postprocess import rank


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_nms_empty():
    assert nms(boxes(), torch.zeros(0), 0.5).tolist() == []


def test_nms_suppresses_at_exactly_the_threshold():
    """(0,0,9,9) has area 100 with +1; (0,0,9,4) area 50, inside it: IoU exactly 0.5. The CPU
    kernel suppresses on >=; the same pair at 0.5000001 stays."""
    pair = boxes((0, 0, 9, 9), (0, 0, 9, 4))
    assert iou_matrix(pair)[0, 1].item() == 0.5
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.5000001).tolist() == [0, 1]


def test_nms_counts_pixels_inclusively():
    """Without +1 these two would not touch; with +1 they share a column of 10 pixels."""
    pair = boxes((0, 0, 9, 9), (9, 0, 18, 9))
    assert iou_matrix(pair)[0, 1].item() == pytest.approx(10 / 190)
    assert nms(pair, torch.tensor([0.9, 0.8]), 0.05).tolist() == [0]


def test_nms_returns_ascending_indices_and_visits_by_score():
    many = boxes((0, 0, 10, 10), (100, 100, 110, 110), (1, 1, 11, 11), (200, 0, 210, 10))
    scores = torch.tensor([0.1, 0.9, 0.8, 0.95])
    # box 2 outranks box 0 and suppresses it; survivors come back in index order
    assert nms(many, scores, 0.5).tolist() == [1, 2, 3]
    assert nms(many, scores, 0.5, max_keep=2).tolist() == [1, 3]


def test_nms_ties_visit_the_lower_index_first():
    pair = boxes((0, 0, 10, 10), (0, 0, 10, 10))
    assert nms(pair, torch.tensor([0.5, 0.5]), 0.7).tolist() == [0]
    assert nms(pair.flip(0), torch.tensor([0.5, 0.5]), 0.7).tolist() == [0]


def test_nms_keeps_degenerate_boxes():
    """Clipped onto the border: zero width, which the +1 convention makes one pixel wide."""
    flat = boxes((799, 10, 799, 50), (799, 100, 799, 140), (0, 0, 50, 50))
    assert nms(flat, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 1, 2]


def _nms_loop(box: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[bool]:
    keep = set(nms(box, scores, threshold).tolist())
    return [i in keep for i in range(len(box))]


@pytest.mark.parametrize("seed", range(3))
def test_class_nms_equals_nms_class_by_class(seed):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(40, 2, generator=generator) * 100
    size = torch.rand(40, 2, generator=generator) * 60
    box = torch.cat((corner, corner + size), dim=1).round()
    scores = torch.rand(7, 40, generator=generator)
    scores[0] = 0.25                      # a class with every score tied
    scores[1, ::2] = scores[1, 1::2]      # pairwise ties
    kept = class_nms_keep(iou_matrix(box), scores, 0.3)
    expected = torch.tensor([_nms_loop(box, row, 0.3) for row in scores])
    assert torch.equal(kept, expected)


def _roi_align_reference(features: np.ndarray, roi: np.ndarray, size: int, scale: float
                         ) -> np.ndarray:
    """The legacy CPU rule, one sample at a time (float64)."""
    channels, height, width = features.shape
    x1, y1, x2, y2 = (float(np.float32(v) * np.float32(scale)) for v in roi)
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bin_w, bin_h = roi_w / size, roi_h / size
    grid_w, grid_h = math.ceil(roi_w / size), math.ceil(roi_h / size)
    out = np.zeros((channels, size, size))
    for ph in range(size):
        for pw in range(size):
            total = np.zeros(channels)
            for iy in range(grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    if y < -1 or y > height or x < -1 or x > width:
                        continue
                    y, x = max(y, 0.0), max(x, 0.0)
                    y_low, x_low = int(y), int(x)
                    if y_low >= height - 1:
                        y_low = y_high = height - 1
                        y = float(y_low)
                    else:
                        y_high = y_low + 1
                    if x_low >= width - 1:
                        x_low = x_high = width - 1
                        x = float(x_low)
                    else:
                        x_high = x_low + 1
                    ly, lx = y - y_low, x - x_low
                    total += ((1 - ly) * (1 - lx) * features[:, y_low, x_low]
                              + (1 - ly) * lx * features[:, y_low, x_high]
                              + ly * (1 - lx) * features[:, y_high, x_low]
                              + ly * lx * features[:, y_high, x_high])
            out[:, ph, pw] = total / (grid_h * grid_w)
    return out


EDGE_ROIS = {
    "inside": (40.0, 30.0, 200.0, 150.0),
    "outside the map": (-400.0, -300.0, -100.0, -50.0),
    "past the far edge": (150.0, 120.0, 900.0, 700.0),
    "straddling the origin": (-30.0, -20.0, 60.0, 40.0),
    "tiny": (100.3, 80.7, 101.1, 81.0),
    "huge": (-2000.0, -1500.0, 3000.0, 2500.0),
    "degenerate on the border": (271.0, 10.0, 271.0, 90.0),
    "point": (0.0, 0.0, 0.0, 0.0),
}


@pytest.mark.parametrize("roi", EDGE_ROIS.values(), ids=EDGE_ROIS.keys())
def test_roi_align_matches_the_legacy_rule(roi):
    features = torch.randn(3, 11, 17, generator=torch.Generator().manual_seed(1))
    ours = roi_align(features, torch.tensor([roi]), 7, 1 / 16)
    expected = _roi_align_reference(features.double().numpy(), np.array(roi), 7, 1 / 16)
    np.testing.assert_allclose(ours[0].numpy(), expected, atol=1e-5)


def test_roi_align_many_rois_and_none():
    features = torch.randn(2, 9, 13, generator=torch.Generator().manual_seed(2))
    rois = torch.tensor(list(EDGE_ROIS.values()))
    together = roi_align(features, rois, 14, 1 / 16, chunk=3)
    alone = torch.cat([roi_align(features, roi[None], 14, 1 / 16) for roi in rois])
    torch.testing.assert_close(together, alone)
    assert roi_align(features, torch.zeros(0, 4), 14, 1 / 16).shape == (0, 2, 14, 14)


def test_box_coder_clamps_the_scale_and_uses_plus_one_widths():
    anchor = boxes((0, 0, 15, 15))                       # 16 wide with +1, centre 8
    decoded = decode_boxes(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), anchor)
    assert decoded.tolist() == [[0.0, 0.0, 15.0, 15.0]]
    huge = decode_boxes(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), anchor)
    half = 0.5 * math.exp(math.log(1000 / 16)) * 16
    assert huge[0].tolist() == pytest.approx([8 - half, 8 - half, 8 + half - 1, 8 + half - 1],
                                             rel=1e-6)


def test_clipping_keeps_boxes_squashed_onto_the_border():
    clipped = clip_boxes(boxes((900, 10, 950, 40), (-20, -5, -1, 30)), 600, 800)
    assert clipped.tolist() == [[799, 10, 799, 40], [0, 0, 0, 30]]


def test_post_processing_modes_are_1_and_2():
    with pytest.raises(UsageError, match="nms_filter must be one of"):
        rank(torch.full((2, 4), 0.25), boxes((0, 0, 5, 5), (1, 1, 6, 6)), 3)
    assert rank(torch.zeros(0, 4), boxes(), 1).proposal_idx.tolist() == []
    assert rank(torch.zeros(0, 4), boxes(), 2).proposal_idx.tolist() == []
