"""From class probabilities over the proposals to VinVL's detections (box regression ignored:
a detection is a proposal), in the original's two post-processing modes (`nms_filter`):

1. per-class legacy NMS at 0.3 over all proposals, each scored by that class's probability;
   a proposal's score is the largest probability among the classes it survived for, its
   label the first class reaching it; proposals surviving for no class drop out. This is
   what the maintainers' extraction command sets.
2. one class-agnostic legacy NMS at 0.5 over the proposals whose best foreground probability
   exceeds 0.002 (and whose box is not inverted), scored by that probability. The released
   features' folder names say this mode.
Either way the survivors are ranked by score (descending) and the first n are kept, n = the
number scoring >= 0.2, at least 10 and at most 100 (fewer only if fewer survive).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hin.errors import UsageError
from hin.extract.vinvl.ops import class_nms_keep, iou_matrix, nms

NMS_FILTERS = (1, 2)
SCORE_THRESHOLD = 0.2
MIN_DETECTIONS = 10
MAX_DETECTIONS = 100
CLASS_NMS = 0.3
AGNOSTIC_NMS = 0.5
CANDIDATE_FACTOR = 0.01          # mode 2 candidates: score > 0.01 x SCORE_THRESHOLD
ATTRIBUTE_THRESHOLD = 0.05
ATTRIBUTES_PER_BOX = 16
ATTRIBUTES_PER_PICTURE = 100


@dataclass
class Ranking:
    """Every candidate the filter ranks, best first: proposal indices, labels, scores."""

    proposal_idx: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor

    def selected(self) -> Ranking:
        """The first clamp(#scores >= 0.2, 10, 100) of the ranking."""
        passing = int((self.scores >= torch.tensor(SCORE_THRESHOLD, dtype=torch.float32)).sum())
        count = min(max(passing, MIN_DETECTIONS), MAX_DETECTIONS)
        return Ranking(self.proposal_idx[:count], self.labels[:count], self.scores[:count])


def rank(probabilities: torch.Tensor, proposals: torch.Tensor, nms_filter: int) -> Ranking:
    """probabilities [R, classes] (column 0 background), proposals [R, 4] -> the ranking."""
    probabilities = probabilities.float()
    if nms_filter == 1:
        return _rank_per_class(probabilities, proposals)
    if nms_filter == 2:
        return _rank_agnostic(probabilities, proposals)
    raise UsageError(f"nms_filter must be one of {NMS_FILTERS}, got {nms_filter}")


def _ordered(proposal_idx: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> Ranking:
    order = torch.argsort(scores, descending=True, stable=True)
    return Ranking(proposal_idx[order], labels[order], scores[order])


def _rank_per_class(probabilities: torch.Tensor, proposals: torch.Tensor) -> Ranking:
    foreground = probabilities[:, 1:]
    if foreground.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=probabilities.device)
        return Ranking(empty, empty, probabilities.new_zeros(0))
    kept = class_nms_keep(iou_matrix(proposals), foreground.t().contiguous(), CLASS_NMS)
    masked = torch.where(kept.t(), foreground, torch.zeros_like(foreground))
    scores, labels = masked.max(dim=1)
    present = torch.nonzero(scores > 0).squeeze(1)
    return _ordered(present, labels[present] + 1, scores[present])


def _rank_agnostic(probabilities: torch.Tensor, proposals: torch.Tensor) -> Ranking:
    scores, labels = probabilities[:, 1:].max(dim=1)
    labels = labels + 1
    limit = torch.tensor(CANDIDATE_FACTOR * SCORE_THRESHOLD, dtype=torch.float32)
    valid = ((proposals[:, 2] - proposals[:, 0] >= 0) & (proposals[:, 3] - proposals[:, 1] >= 0)
             & (scores > limit))
    candidates = torch.nonzero(valid).squeeze(1)
    keep = candidates[nms(proposals[candidates], scores[candidates], AGNOSTIC_NMS)]
    return _ordered(keep, labels[keep], scores[keep])


def filter_attributes(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribute logits [N, A] -> the top 16 (labels, scores) per box, as the original filters
    them: no-attribute column and probabilities <= 0.05 set to 0, then a per-picture cap taken
    as the k-th smallest of all N x A values (zeros included; it rarely removes anything)."""
    probabilities = logits.float().softmax(dim=1)
    probabilities[:, 0] = 0
    probabilities = torch.where(probabilities > ATTRIBUTE_THRESHOLD, probabilities,
                                torch.zeros_like(probabilities))
    nonzero = int((probabilities > 0).sum())
    if nonzero > ATTRIBUTES_PER_PICTURE:
        floor = torch.kthvalue(probabilities.flatten().cpu(),
                               nonzero - ATTRIBUTES_PER_PICTURE + 1).values.item()
        probabilities = torch.where(probabilities >= floor, probabilities,
                                    torch.zeros_like(probabilities))
    top = min(ATTRIBUTES_PER_BOX, probabilities.shape[1])
    scores, labels = probabilities.topk(top, dim=1)
    return labels, scores
