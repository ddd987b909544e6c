"""VinVL's box head and attribute head, with the original's names (`roi_heads.box.*`,
`attribute.*`).

Box head: legacy ROIAlign 14x14 at 1/16 -> res5 -> mean over 7x7 = the C5 vector (the stored
feature, and the classifier's input) -> `cls_score` over 1595 classes (0 = background),
softmax. `bbox_pred` is loaded but never evaluated: VinVL's features were extracted with box
regression ignored, so a detection's box is its proposal.

Attribute head (optional, HIN does not use it): the original pools the final boxes again
through the same res5 weights; the final boxes are proposals, so their C5 vectors are the
ones already computed and are reused. C5 + the label's embedding -> `fc_attr` -> ReLU ->
`attr_score` (525, 0 = none) -> softmax, then the original's filtering (postprocess.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hin.extract.vinvl.backbone import Res5Head, VinVLShape
from hin.extract.vinvl.ops import roi_align

POOLER_RESOLUTION = 14
POOLER_SCALE = 1.0 / 16
HEAD_CHUNK = 100        # RoIs per res5 pass: bounds the head's memory (full size: ~0.5 GB each)


class BoxFeatureExtractor(nn.Module):
    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        self.head = Res5Head(shape)

    def forward(self, res4: torch.Tensor, boxes: torch.Tensor,
                layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """res4 [C, h4, w4] of one picture, boxes [R, 4] -> C5 vectors [R, 8R] (float32)."""
        out = []
        for start in range(0, max(len(boxes), 1), HEAD_CHUNK):
            pooled = roi_align(res4, boxes[start:start + HEAD_CHUNK], POOLER_RESOLUTION,
                               POOLER_SCALE)
            pooled = pooled.contiguous(memory_format=layout)
            out.append(self.head(pooled).float().mean(dim=(2, 3)))
        return torch.cat(out)


class BoxPredictor(nn.Module):
    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        self.cls_score = nn.Linear(shape.feature_dim, shape.num_classes)
        self.bbox_pred = nn.Linear(shape.feature_dim, 4 * shape.num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """C5 vectors -> class logits (float32)."""
        return self.cls_score(features).float()


class BoxHead(nn.Module):
    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        self.feature_extractor = BoxFeatureExtractor(shape)
        self.predictor = BoxPredictor(shape)


class RoIHeads(nn.Module):
    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        self.box = BoxHead(shape)


class AttributePredictor(nn.Module):
    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        self.cls_embedding = nn.Embedding(shape.num_classes, shape.class_embedding)
        self.fc_attr = nn.Linear(shape.feature_dim + shape.class_embedding,
                                 shape.attribute_hidden)
        self.attr_score = nn.Linear(shape.attribute_hidden, shape.num_attributes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """C5 vectors [N, 8R] and class labels [N] -> attribute logits [N, 525] (float32)."""
        joined = torch.cat((features, self.cls_embedding(labels).to(features.dtype)), dim=1)
        return self.attr_score(F.relu(self.fc_attr(joined))).float()


class AttributeHead(nn.Module):
    """`attribute.feature_extractor` is the box head's feature extractor itself (the
    original shares it), so the state dict has the published alias keys."""

    def __init__(self, shared: BoxFeatureExtractor, shape: VinVLShape) -> None:
        super().__init__()
        self.feature_extractor = shared
        self.predictor = AttributePredictor(shape)
