"""Region features straight from pictures: the built-in DETR extractor.

These are not VinVL's features (the paper's region features come from VinVL's Faster R-CNN,
which is not a transformers model; import them with `hin extract regions --vinvl-tsv`). DETR
gives, per picture, `num_queries` decoder states; each query predicts a class (the last one
is "no object") and a box. We keep the queries whose most probable real class reaches
`threshold`, most confident first, at most `max_regions`:
- `features` [n, d_model] (256 for DETR-R50): the decoder's final states, what its class and
  box heads read, stored as `store_as` (float16 by default, or float32);
- `boxes` [n, 4]: (x1, y1, x2, y2) in pixels of the original picture;
- `cls_prob` [n]: that class probability; `size`: (height, width) of the picture.
A model trained on them must record the extractor (the file attributes say which), and a
picture with no confident query gets zero regions, never invented ones.

It runs without timm and torchvision: the default checkpoint is `facebook/detr-resnet-50`
at revision `no_timm`, whose backbone is transformers' own ResNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from hin.devices import resolve_device
from hin.errors import MissingExtraError, UsageError
from hin.extract.hf import (
    COMPUTE_DTYPES,
    extraction_autocast,
    load_pretrained,
    resolve_extraction_precision,
    storage_dtype,
    transformers_module,
)
from hin.extract.registry import ImageEntry, register_extractor
from hin.extract.resize import Resize, check_resized

DEFAULT_DETR = "facebook/detr-resnet-50"
DEFAULT_DETR_REVISION = "no_timm"


@dataclass(frozen=True)
class DetrPicture:
    pixels: np.ndarray          # [3, h, w] resized and normalised, not padded
    height: int                 # of the original picture
    width: int


@dataclass(frozen=True)
class DetrPreprocessor:
    """Picklable wrapper of the checkpoint's own (PIL/NumPy) DETR image processor. With its
    usual size rule (short side to `shortest_edge`, long side at most `longest_edge`), a
    picture of `2 x longest_edge`:1 or more would shrink to 0 pixels across and is refused
    first (`hin.extract.resize`), with the processor's own arithmetic."""

    processor: Any

    def __call__(self, picture: Image.Image) -> DetrPicture:
        size = self.processor.size
        if size.shortest_edge:
            from transformers.image_transforms import get_size_with_aspect_ratio
            longest = size.longest_edge or size.shortest_edge
            height, width = get_size_with_aspect_ratio((picture.height, picture.width),
                                                       size.shortest_edge, longest)
            check_resized(Resize("DETR", picture.width, picture.height, width, height, 2 * longest))
        pixels = self.processor(images=picture, return_tensors="np",
                                do_pad=False)["pixel_values"][0]
        return DetrPicture(pixels.astype(np.float32), picture.height, picture.width)


@register_extractor("detr")
class DetrRegionExtractor:
    """DETR decoder states of the confident queries, with boxes; see the module docstring."""

    name: str
    kind = "region"

    def __init__(self, model: str = DEFAULT_DETR, revision: str | None = DEFAULT_DETR_REVISION,
                 device: str = "auto", precision: str = "fp32", threshold: float = 0.5,
                 max_regions: int = 50, store_as: str = "float16") -> None:
        if not 0.0 <= threshold < 1.0 or max_regions < 1:
            raise UsageError(f"threshold must be in [0, 1) and max_regions positive, got "
                             f"{threshold} and {max_regions}")
        self.store_as = store_as
        self.storage_dtype = storage_dtype(store_as)
        transformers = transformers_module()
        self.model_name = str(model)
        self.revision = revision
        self.device = resolve_device(device)
        self.precision = resolve_extraction_precision(precision, self.device)
        self.threshold = threshold
        self.max_regions = max_regions
        try:
            self.model = load_pretrained(transformers.DetrForObjectDetection, self.model_name,
                                         self.device, self.precision, revision=revision)
        except ImportError as error:
            raise MissingExtraError(f"{self.model_name} needs {error}; use a checkpoint with "
                              "transformers' own ResNet backbone, e.g. facebook/detr-resnet-50 "
                              "at revision no_timm") from error
        processor = transformers.DetrImageProcessorPil.from_pretrained(
            self.model_name, revision=revision, local_files_only=True)
        self.preprocess = DetrPreprocessor(processor)
        self.feature_dim = self.model.config.d_model

    @classmethod
    def from_attributes(cls, recorded: dict[str, Any], device: str = "auto",
                        precision: str = "fp32") -> DetrRegionExtractor:
        """The extractor that wrote a file with these attributes (see `attributes`)."""
        return cls(str(recorded["model"]), revision=str(recorded["revision"]) or None,
                   device=device, precision=precision, threshold=float(recorded["threshold"]),
                   max_regions=int(recorded["max_regions"]),
                   store_as=str(recorded.get("storage_dtype", "float16")))

    def attributes(self) -> dict[str, Any]:
        return {"extractor": self.name, "kind": self.kind, "model": self.model_name,
                "revision": self.revision or "", "feature_dim": self.feature_dim,
                "threshold": self.threshold, "max_regions": self.max_regions,
                "compute_dtype": COMPUTE_DTYPES[self.precision], "storage_dtype": self.store_as}

    def __call__(self, prepared: Sequence[DetrPicture]) -> list[ImageEntry]:
        """One forward pass per prepared size. A mixed batch would be padded to its largest
        picture, and padding changes DETR's outputs: a picture's regions must not depend on the
        pictures that came with it."""
        shapes = [picture.pixels.shape for picture in prepared]
        entries: dict[int, ImageEntry] = {}
        for shape in dict.fromkeys(shapes):
            group = [i for i, other in enumerate(shapes) if other == shape]
            entries.update(zip(group, self._detect([prepared[i] for i in group])))
        return [entries[i] for i in range(len(prepared))]

    @torch.inference_mode()
    def _detect(self, prepared: Sequence[DetrPicture]) -> list[ImageEntry]:
        """Pictures of one prepared size, stacked as they are (no padding)."""
        pixels = torch.from_numpy(np.stack([picture.pixels for picture in prepared]))
        mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long)
        with extraction_autocast(self.device, self.precision):
            output = self.model(pixel_values=pixels.to(self.device, self.model.dtype),
                                pixel_mask=mask.to(self.device))
        probabilities = output.logits.float().softmax(-1)[..., :-1]     # drop "no object"
        confidence = probabilities.max(-1).values                        # [B, Q]
        return [self._regions(picture, states, boxes, scores)
                for picture, states, boxes, scores in zip(
                    prepared, output.last_hidden_state.float(), output.pred_boxes.float(),
                    confidence)]

    def _regions(self, picture: DetrPicture, states: torch.Tensor, boxes: torch.Tensor,
                 scores: torch.Tensor) -> ImageEntry:
        order = scores.argsort(descending=True, stable=True)
        kept = order[scores[order] >= self.threshold][:self.max_regions]
        cx, cy, w, h = boxes[kept].unbind(-1)
        corners = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)
        scale = torch.tensor([picture.width, picture.height] * 2, dtype=corners.dtype)
        return {"features": states[kept].cpu().numpy().astype(self.storage_dtype),
                "boxes": (corners.cpu() * scale).numpy().astype(np.float32),
                "size": np.array([picture.height, picture.width], dtype=np.int64),
                "cls_prob": scores[kept].cpu().numpy().astype(np.float32)}
