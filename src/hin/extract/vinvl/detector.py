"""The VinVL X152-C4 detector at test time, one picture at a time (as the released features'
comparisons assume: a batch of two would zero-pad the smaller picture, which changes it).

backbone (res4) -> RPN (300 proposals) -> box head once over all proposals (C5 vectors,
class probabilities) -> post-processing (postprocess.py) -> detections in descending score,
whose features are the C5 vectors of their proposals and whose boxes are those proposals,
rescaled per axis to the original picture's pixels (float32 ratios, no clipping).
`Scored` and `Detection` keep every intermediate value the golden tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hin.extract.vinvl.backbone import Backbone, FrozenBatchNorm2d, VinVLShape
from hin.extract.vinvl.head import AttributeHead, RoIHeads
from hin.extract.vinvl.postprocess import Ranking, filter_attributes, rank
from hin.extract.vinvl.preprocess import network_input
from hin.extract.vinvl.rpn import RPN, RPNOutput

_CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))


def _fold(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
    scale = bn.weight * bn.running_var.rsqrt()
    conv.weight.data = conv.weight.data * scale.view(-1, 1, 1, 1)
    conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)


@dataclass
class Scored:
    """One picture's forward pass, everything before post-processing."""

    res4: torch.Tensor              # [1, C4, h4, w4]
    rpn: RPNOutput
    box_features: torch.Tensor      # [R, C5] every proposal's feature
    class_logits: torch.Tensor      # [R, classes]
    class_probs: torch.Tensor       # [R, classes]
    height: int                     # original picture
    width: int
    input_size: tuple[int, int]     # (h, w) of the network input
    bf16: bool


@dataclass
class Detection:
    """One picture's detections (best first) and the forward pass they come from."""

    scored: Scored
    ranking: Ranking                # every ranked candidate
    kept: Ranking                   # the detections
    boxes: torch.Tensor             # [N, 4] original picture pixels
    boxes_resized: torch.Tensor     # [N, 4] network input pixels
    features: torch.Tensor          # [N, C5]
    attr_logits: torch.Tensor | None = None
    attr_labels: torch.Tensor | None = None
    attr_scores: torch.Tensor | None = None

    def oscar_rows(self) -> np.ndarray:
        """[N, C5 + 6] float32: the feature, then x1/W, y1/H, x2/W, y2/H, w/W, h/H (the
        Oscar/VinVL `features.tsv` row; computed in float64 from the float32 boxes)."""
        boxes = self.boxes.double().cpu().numpy()
        width, height = float(self.scored.width), float(self.scored.height)
        x1, y1 = boxes[:, 0] / width, boxes[:, 1] / height
        box_w = (boxes[:, 2] - boxes[:, 0]) / width
        box_h = (boxes[:, 3] - boxes[:, 1]) / height
        geometry = np.stack([x1, y1, x1 + box_w, y1 + box_h, box_w, box_h], axis=1)
        return np.concatenate([self.features.float().cpu().numpy(),
                               geometry.astype(np.float32)], axis=1)


class VinVLDetector(nn.Module):
    """Module names as the original's, so its state dict loads as published."""

    def __init__(self, shape: VinVLShape) -> None:
        super().__init__()
        self.shape = shape
        self.backbone = Backbone(shape)
        self.rpn = RPN(shape.res4_channels)
        self.roi_heads = RoIHeads(shape)
        self.attribute = AttributeHead(self.roi_heads.box.feature_extractor, shape)

    def prepare_bf16(self) -> None:
        """For bfloat16 autocast: each frozen BN folded into its convolution (weight x scale,
        bias = shift, in float32 before autocast rounds them), which saves a pass over every
        activation and the cancellation of x * scale + shift at bfloat16's 3 digits; weights
        channels-last. The float32 path must not use a model prepared so (other bits)."""
        for module in self.modules():
            for conv_name, bn_name in _CONV_BN_PAIRS:
                conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                    _fold(conv, bn)
                    setattr(module, bn_name, nn.Identity())
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(
                    memory_format=torch.channels_last)

    def detect(self, pixels: np.ndarray, height: int, width: int, nms_filter: int = 1,
               attributes: bool = False, bf16: bool = False) -> Detection:
        """`score` then `select`."""
        return self.select(self.score(pixels, height, width, bf16), nms_filter, attributes)

    @torch.inference_mode()
    def score(self, pixels: np.ndarray, height: int, width: int, bf16: bool = False) -> Scored:
        """uint8 RGB pixels [h, w, 3] already resized (preprocess.prepare) of a picture
        originally `height` x `width` -> proposals, their features and class probabilities.
        The box head runs once, over all proposals. `bf16` runs the convolutions and linear
        layers under bfloat16 autocast, channels-last; boxes, NMS and ROIAlign stay float32.
        float32 keeps the contiguous layout: it gives the original's bits (same oneDNN
        kernels), where channels-last moves res4 by ~3e-3 and the boxes by ~1e-2 px."""
        device = next(self.parameters()).device
        image = network_input(pixels).to(device)[None]
        layout = torch.channels_last if bf16 else torch.contiguous_format
        image = image.contiguous(memory_format=layout)
        in_h, in_w = image.shape[-2:]
        cudnn = torch.backends.cudnn
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), cudnn.flags(
                enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                benchmark_limit=cudnn.benchmark_limit, deterministic=cudnn.deterministic,
                allow_tf32=bf16):                                      # fp32 means fp32
            res4 = self.backbone(image)
            proposals = self.rpn(res4, in_h, in_w)
            box_head = self.roi_heads.box
            features = box_head.feature_extractor(res4[0], proposals.proposals, layout)
            logits = box_head.predictor(features)
        return Scored(res4.float(), proposals, features, logits, logits.softmax(dim=1), height,
                      width, (in_h, in_w), bf16)

    @torch.inference_mode()
    def select(self, scored: Scored, nms_filter: int = 1, attributes: bool = False) -> Detection:
        """The detections of post-processing mode `nms_filter`, boxes back in the picture's
        pixels; with `attributes`, the attribute head on them."""
        proposals = scored.rpn.proposals
        ranking = rank(scored.class_probs, proposals, nms_filter)
        kept = ranking.selected()
        resized = proposals[kept.proposal_idx]
        in_h, in_w = scored.input_size
        ratio = torch.tensor([scored.width / in_w, scored.height / in_h] * 2,
                             dtype=torch.float32, device=proposals.device)
        detection = Detection(scored, ranking, kept, resized * ratio, resized,
                              scored.box_features[kept.proposal_idx])
        if attributes:
            with torch.autocast(proposals.device.type, dtype=torch.bfloat16,
                                enabled=scored.bf16):
                attr_logits = self.attribute.predictor(detection.features, kept.labels)
            detection.attr_logits = attr_logits
            detection.attr_labels, detection.attr_scores = filter_attributes(attr_logits)
        return detection
