"""VinVL's region proposal network at test time, with the original's names (`rpn.*`).

One 3x3 convolution and ReLU, then 15 objectness logits and 60 box deltas per position of the
res4 map. The 15 cell anchors are a buffer of the checkpoint (`rpn.anchor_generator.
cell_anchors.0`), shifted by 16 pixels per cell; anchors, logits and deltas are flattened in
the order (y, x, anchor). The 6000 most probable anchors (sigmoid, `topk` sorted) are decoded
(ops.decode_boxes), clipped onto the picture, and the legacy NMS at 0.7 keeps the first 300:
the proposals, in descending objectness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hin.extract.vinvl.ops import clip_boxes, decode_boxes, nms

ANCHORS_PER_CELL = 15
ANCHOR_STRIDE = 16
PRE_NMS_TOP_N = 6000
POST_NMS_TOP_N = 300
RPN_NMS_THRESHOLD = 0.7


@dataclass
class RPNOutput:
    """What the RPN computed for one picture (the intermediate values are kept for tests)."""

    logits: torch.Tensor            # [1, 15, h4, w4]
    deltas: torch.Tensor            # [1, 60, h4, w4]
    pre_nms_boxes: torch.Tensor     # [k, 4], descending objectness
    pre_nms_scores: torch.Tensor    # [k]
    keep: torch.Tensor              # [<=300] positions into the two above, ascending
    proposals: torch.Tensor         # [<=300, 4] float32, input pixels
    objectness: torch.Tensor        # [<=300]


class AnchorGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell_anchors = nn.Module()
        self.cell_anchors.register_buffer("0", torch.empty(ANCHORS_PER_CELL, 4))

    def grid_anchors(self, rows: int, cols: int) -> torch.Tensor:
        """[rows * cols * 15, 4]: the cell anchors at every position, (y, x, a) order."""
        cell = self.cell_anchors.get_buffer("0").float()
        xs = torch.arange(0, cols * ANCHOR_STRIDE, ANCHOR_STRIDE, dtype=torch.float32,
                          device=cell.device)
        ys = torch.arange(0, rows * ANCHOR_STRIDE, ANCHOR_STRIDE, dtype=torch.float32,
                          device=cell.device)
        shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)


class RPNHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, ANCHORS_PER_CELL, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * ANCHORS_PER_CELL, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.conv(x))
        return self.cls_logits(hidden), self.bbox_pred(hidden)


class RPN(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator()
        self.head = RPNHead(channels)

    def forward(self, res4: torch.Tensor, height: int, width: int) -> RPNOutput:
        """Proposals for one picture (`res4` [1, C, h4, w4]; `height` x `width` the network
        input size)."""
        logits, deltas = self.head(res4)
        logits, deltas = logits.float(), deltas.float()
        rows, cols = logits.shape[-2:]
        objectness = logits[0].permute(1, 2, 0).reshape(-1).sigmoid()
        flat_deltas = deltas[0].reshape(ANCHORS_PER_CELL, 4, rows, cols).permute(2, 3, 0, 1)
        flat_deltas = flat_deltas.reshape(-1, 4)
        top = min(PRE_NMS_TOP_N, objectness.numel())
        scores, index = objectness.topk(top, sorted=True)
        anchors = self.anchor_generator.grid_anchors(rows, cols)
        boxes = decode_boxes(flat_deltas[index], anchors[index])
        boxes = clip_boxes(boxes, height, width)
        keep = nms(boxes, scores, RPN_NMS_THRESHOLD, max_keep=POST_NMS_TOP_N)
        return RPNOutput(logits, deltas, boxes, scores, keep, boxes[keep], scores[keep])
