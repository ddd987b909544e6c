"""The registered `vinvl-x152c4` region extractor: VinVL's own detector (detector.py), so a
model trained on VinVL's released features (the paper's, the authors' checkpoint) reads
features made the same way from any picture.

Per picture, in the original's order (descending score): `features` [n, 2048] (the C5
vectors, float32 by default as released), `boxes` [n, 4] (x1, y1, x2, y2 in the picture's
own pixels), `size` (height, width), `cls_prob` [n] (the detection scores) and `labels` [n]
(class indices into VinVL's 1595-class label map, 0 = background, never a detection).
Optionally `oscar` [n, 2054] (the feature and the 6 box-geometry values of the Oscar/VinVL
`features.tsv` rows) and the attribute head's `attr_labels` / `attr_scores` [n, 16].
Pictures run one at a time, as the fixtures' original did (no padding between pictures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hin.devices import resolve_device
from hin.errors import UsageError
from hin.extract.hf import COMPUTE_DTYPES, resolve_extraction_precision, storage_dtype
from hin.extract.registry import ImageEntry, register_extractor
from hin.extract.vinvl.loading import load_detector, missing_weights_message
from hin.extract.vinvl.postprocess import NMS_FILTERS, SCORE_THRESHOLD
from hin.extract.vinvl.preprocess import MAX_SIZE, MIN_SIZE, VinVLPicture, prepare

EXTRACTOR_NAME = "vinvl-x152c4"


@register_extractor(EXTRACTOR_NAME)
class VinVLExtractor:
    """VinVL X152-C4 detections and their C5 features; see the module docstring."""

    name: str
    kind = "region"

    def __init__(self, weights: str | Path | None = None, nms_filter: int = 1,
                 device: str = "auto", precision: str = "fp32", store_as: str = "float32",
                 oscar_rows: bool = False, attributes: bool = False) -> None:
        if weights is None:
            raise UsageError(f"the {EXTRACTOR_NAME} extractor needs its weights file: "
                             f"{missing_weights_message('(none given)')}")
        if nms_filter not in NMS_FILTERS:
            raise UsageError(f"nms_filter must be 1 (per-class NMS, the maintainers' command) or "
                             f"2 (class-agnostic NMS), got {nms_filter}")
        self.weights = str(Path(weights).expanduser().resolve())
        self.nms_filter = int(nms_filter)
        self.store_as = store_as
        self.storage_dtype = storage_dtype(store_as)
        self.device = resolve_device(device)
        self.precision = resolve_extraction_precision(precision, self.device)
        if self.precision == "fp16":
            raise UsageError(f"{EXTRACTOR_NAME} computes in fp32 (the original's arithmetic) or "
                             "bf16 autocast, not fp16")
        self.oscar_rows = bool(oscar_rows)
        self.with_attributes = bool(attributes)
        self.model = load_detector(self.weights, self.device)
        if self.precision == "bf16":
            self.model.prepare_bf16()
        self.feature_dim = self.model.shape.feature_dim
        self.preprocess = prepare

    @classmethod
    def from_attributes(cls, recorded: dict[str, Any], device: str = "auto",
                        precision: str = "fp32", weights: str | Path | None = None,
                        ) -> VinVLExtractor:
        """The extractor that wrote a file with these attributes; `weights` overrides the
        recorded path (the same file, elsewhere)."""
        return cls(weights if weights is not None else str(recorded["weights"]),
                   nms_filter=int(recorded["nms_filter"]), device=device, precision=precision,
                   store_as=str(recorded["storage_dtype"]),
                   oscar_rows=bool(recorded.get("oscar_rows", 0)),
                   attributes=bool(recorded.get("attributes", 0)))

    def attributes(self) -> dict[str, Any]:
        return {"extractor": self.name, "kind": self.kind, "weights": self.weights,
                "feature_dim": self.feature_dim, "nms_filter": self.nms_filter,
                "score_threshold": SCORE_THRESHOLD, "min_size": MIN_SIZE, "max_size": MAX_SIZE,
                "oscar_rows": int(self.oscar_rows), "attributes": int(self.with_attributes),
                "compute_dtype": COMPUTE_DTYPES[self.precision], "storage_dtype": self.store_as}

    def __call__(self, prepared: Sequence[VinVLPicture]) -> list[ImageEntry]:
        return [self._entry(picture) for picture in prepared]

    def _entry(self, picture: VinVLPicture) -> ImageEntry:
        found = self.model.detect(picture.pixels, picture.height, picture.width,
                                  nms_filter=self.nms_filter, attributes=self.with_attributes,
                                  bf16=self.precision == "bf16")
        entry = {"features": found.features.float().cpu().numpy().astype(self.storage_dtype),
                 "boxes": found.boxes.float().cpu().numpy(),
                 "size": np.array([picture.height, picture.width], dtype=np.int64),
                 "cls_prob": found.kept.scores.float().cpu().numpy(),
                 "labels": found.kept.labels.cpu().numpy().astype(np.int64)}
        if self.oscar_rows:
            entry["oscar"] = found.oscar_rows()
        if found.attr_labels is not None and found.attr_scores is not None:
            entry["attr_labels"] = found.attr_labels.cpu().numpy().astype(np.int64)
            entry["attr_scores"] = found.attr_scores.float().cpu().numpy()
        return entry
