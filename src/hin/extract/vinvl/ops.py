"""The detector's box operations, as VinVL's original compiled CPU kernels compute them, in
plain PyTorch/NumPy (no torchvision, no compiled extension):

- `nms`: the legacy kernel: areas and overlaps with +1, boxes visited by descending score, a
  later box suppressed when its IoU with a kept box is >= the threshold (the CPU kernel; the
  CUDA kernel used >), kept indices returned in ascending index order. Runs on the CPU in
  float32 whatever the model's device (a few thousand boxes).
- `class_nms_keep`: the same rule for every class at once over one set of boxes (VinVL's
  per-class post-processing), vectorised over classes.
- `roi_align`: legacy ROIAlign (aligned=False, adaptive sampling ratio). Bilinear sampling and
  the per-bin average are separable in y and x, so each RoI is two small matrix products with
  the feature map instead of a gather of every sample point.
- `decode_boxes` / `clip_boxes`: the Detectron box coder (+1 widths, -1 on x2/y2, clamped
  log-scale) and clipping onto the picture, degenerate boxes kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BOX_SCALE_CLIP = math.log(1000.0 / 16)


def _iou_row(boxes: np.ndarray, areas: np.ndarray, i: int, others: np.ndarray) -> np.ndarray:
    """IoU (float32, +1 convention) of box i with the boxes at positions `others`. Inverted
    boxes can make 0 / 0: NaN, which suppresses nothing, as in the original kernel."""
    one = np.float32(1)
    zero = np.float32(0)
    width = np.maximum(zero, np.minimum(boxes[i, 2], boxes[others, 2])
                       - np.maximum(boxes[i, 0], boxes[others, 0]) + one)
    height = np.maximum(zero, np.minimum(boxes[i, 3], boxes[others, 3])
                        - np.maximum(boxes[i, 1], boxes[others, 1]) + one)
    inter = width * height
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (areas[i] + areas[others] - inter)


def iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """[n, n] IoU of every pair, float32, +1 convention (as the legacy NMS measures it)."""
    b = boxes.float()
    areas = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    width = (torch.minimum(b[:, None, 2], b[None, :, 2])
             - torch.maximum(b[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    height = (torch.minimum(b[:, None, 3], b[None, :, 3])
              - torch.maximum(b[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    inter = width * height
    return inter / (areas[:, None] + areas[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float,
        max_keep: int | None = None) -> torch.Tensor:
    """Kept indices (ascending) of the legacy NMS; see the module docstring. With `max_keep`,
    only the first `max_keep` kept in visiting order are returned (ascending): the caller
    keeps that many of an already score-sorted list, so the search stops there."""
    count = boxes.shape[0]
    device = boxes.device
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    box_array = boxes.detach().float().cpu().numpy()
    order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True).numpy()
    ordered = np.ascontiguousarray(box_array[order])
    areas = ((ordered[:, 2] - ordered[:, 0] + np.float32(1))
             * (ordered[:, 3] - ordered[:, 1] + np.float32(1)))
    limit = np.float32(threshold)
    suppressed = np.zeros(count, dtype=bool)
    kept: list[int] = []
    for position in range(count):
        if suppressed[position]:
            continue
        kept.append(position)
        if max_keep is not None and len(kept) == max_keep:
            break
        later = np.arange(position + 1, count)
        later = later[~suppressed[later]]
        if later.size:
            suppressed[later[_iou_row(ordered, areas, position, later) >= limit]] = True
    indices = np.sort(order[np.asarray(kept, dtype=np.int64)])
    return torch.from_numpy(indices).to(device)


def class_nms_keep(iou: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """[classes, n] bool: which of n boxes each class's legacy NMS keeps, every class scoring
    the same boxes (`iou` their [n, n] matrix) by its own row of `scores` [classes, n].

    Step t looks at every class's t-th best box at once: the classes for which it is still
    unsuppressed keep it, and it suppresses the boxes overlapping it at IoU >= threshold.
    Only later boxes can be among those (an earlier kept box overlapping it would have
    suppressed it), so no rank mask is needed once a box no longer suppresses itself."""
    classes, count = scores.shape
    order = torch.argsort(scores, dim=1, descending=True, stable=True)          # [classes, n]
    overlapping = iou >= torch.tensor(threshold, dtype=iou.dtype)              # [n, n]
    overlapping.fill_diagonal_(False)
    suppressed = torch.zeros(classes, count, dtype=torch.bool, device=scores.device)
    rows = torch.arange(classes, device=scores.device)
    for step in range(count):
        box = order[:, step]                                                   # [classes]
        active = torch.nonzero(~suppressed[rows, box]).squeeze(1)
        if active.numel():
            suppressed[active] |= overlapping[box[active]]
    return ~suppressed


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int,
              spatial_scale: float, chunk: int = 32) -> torch.Tensor:
    """Legacy ROIAlign of one picture's map `features` [C, H, W] at `rois` [R, 4] (x1, y1, x2,
    y2 in input pixels) -> [R, C, output_size, output_size]; see the module docstring."""
    with torch.autocast(features.device.type, enabled=False):       # float32 under bf16 too
        return _roi_align(features.float(), rois, output_size, spatial_scale, chunk)


def _roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int,
               spatial_scale: float, chunk: int) -> torch.Tensor:
    channels, height, width = features.shape
    count = rois.shape[0]
    out = features.new_zeros(count, channels, output_size, output_size)
    if count == 0:
        return out
    scaled = rois.float() * torch.tensor(spatial_scale, dtype=torch.float32, device=rois.device)
    rows = _axis_weights(scaled[:, 1], scaled[:, 3], height, output_size)     # [R, P, H]
    cols = _axis_weights(scaled[:, 0], scaled[:, 2], width, output_size)      # [R, P, W]
    by_rows = features.permute(1, 0, 2).reshape(height, channels * width)     # [H, C*W]
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        part = rows[start:stop] @ by_rows                                      # [r, P, C*W]
        part = part.reshape(stop - start, output_size * channels, width)
        part = part @ cols[start:stop].transpose(1, 2)                         # [r, P*C, P]
        out[start:stop] = part.reshape(stop - start, output_size, channels,
                                       output_size).permute(0, 2, 1, 3)
    return out


def _axis_weights(start: torch.Tensor, end: torch.Tensor, size: int, bins: int) -> torch.Tensor:
    """[R, bins, size]: for each RoI and bin along one axis, the weight of each map row (or
    column) in that bin's average: the bilinear weights of its ceil(extent / bins) samples,
    divided by their number. Samples beyond [-1, size] weigh nothing but still count."""
    extent = torch.clamp(end - start, min=1.0)
    bin_size = extent / bins
    grid = torch.ceil(extent / bins).to(torch.int64)                          # samples per bin
    most = int(grid.max().item())
    bin_index = torch.arange(bins, device=start.device, dtype=torch.float32)
    sample = torch.arange(most, device=start.device, dtype=torch.float32)
    gridf = grid.to(torch.float32)
    coord = (start[:, None, None] + bin_index[None, :, None] * bin_size[:, None, None]
             + (sample[None, None, :] + 0.5) * bin_size[:, None, None] / gridf[:, None, None])
    used = sample[None, None, :] < gridf[:, None, None]                        # [R, bins, S]
    inside = (coord >= -1.0) & (coord <= size) & used
    coord = coord.clamp(min=0.0)
    low = torch.floor(coord).to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(coord.dtype), coord)
    frac = coord - low.to(coord.dtype)
    share = inside.to(coord.dtype) / gridf[:, None, None]
    weights = torch.zeros(start.shape[0], bins, size, dtype=torch.float32, device=start.device)
    weights.scatter_add_(2, low, (1 - frac) * share)
    weights.scatter_add_(2, high, frac * share)
    return weights


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Detectron box coder, weights (1, 1, 1, 1): deltas [n, 4] on anchors [n, 4] -> boxes."""
    anchors = anchors.to(deltas.dtype)
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    centre_x = anchors[:, 0] + 0.5 * widths
    centre_y = anchors[:, 1] + 0.5 * heights
    dx, dy, dw, dh = deltas.unbind(1)
    dw = torch.clamp(dw, max=BOX_SCALE_CLIP)
    dh = torch.clamp(dh, max=BOX_SCALE_CLIP)
    new_x = dx * widths + centre_x
    new_y = dy * heights + centre_y
    new_w = torch.exp(dw) * widths
    new_h = torch.exp(dh) * heights
    return torch.stack((new_x - 0.5 * new_w, new_y - 0.5 * new_h,
                        new_x + 0.5 * new_w - 1, new_y + 0.5 * new_h - 1), dim=1)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x onto [0, width - 1], y onto [0, height - 1]; boxes squashed to zero size are kept."""
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1.clamp(0, width - 1), y1.clamp(0, height - 1),
                        x2.clamp(0, width - 1), y2.clamp(0, height - 1)), dim=1)
