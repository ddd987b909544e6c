"""CLIP grid features (what the paper used): patch tokens and the projected class token.

Per image, from transformers' CLIP vision tower (ViT-L/14 at 224 px by default), exactly the
reference's recipe (its extraction ran OpenAI's CLIP `VisionTransformer` in fp32, applied
`ln_post` to every token, kept tokens 1: as the grid and projected `ln_post(class token)`;
tests/extract/test_clip_fidelity.py checks this against OpenAI's code):
- `features` [256, 1024]: the last layer's patch tokens (class token dropped) after the
  post-layer-norm. In transformers, `last_hidden_state` is taken *before* `post_layernorm`
  and `pooler_output` is `post_layernorm(class token)`, so the norm is applied here;
- `global` [768]: `visual_projection(pooler_output)`, i.e. CLIP's image embedding, not
  normalised.
Both are stored as `store_as`: float16 by default (half the disk), float32 as the reference
stored them; whatever the arithmetic (`precision`: fp32, the reference's and the faithful
one; bf16 autocast; or fp16 weights on CUDA, faster and further from the reference). Pictures
are prepared as CLIP does (images.ClipPreprocessor). For figures, each image also gets `size`
(h, w) and `crop` (x1, y1, x2, y2: the square of the picture the patches cover, in its
pixels), and the file records the patch layout (`grid_rows` x `grid_cols`, row-major).
Weights come from a local folder or the Hugging Face cache; this module never substitutes
anything for weights it cannot load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from hin.data.features import GRID_COLS, GRID_ROWS
from hin.devices import resolve_device
from hin.extract.hf import (
    COMPUTE_DTYPES,
    extraction_autocast,
    load_pretrained,
    resolve_extraction_precision,
    storage_dtype,
    transformers_module,
)
from hin.extract.images import ClipPreprocessor, max_pixels
from hin.extract.registry import ImageEntry, register_extractor
from hin.extract.resize import Resize, check_resized

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


@dataclass(frozen=True)
class ClipPicture:
    pixels: np.ndarray                              # [3, size, size] prepared
    height: int                                     # of the original picture
    width: int
    crop: tuple[float, float, float, float]         # what the pixels show, in picture pixels


@dataclass(frozen=True)
class ClipPicturePreprocessor:
    """CLIP's preparation, keeping where the prepared square lies on the picture (picklable).
    The short side becomes `size` before the crop, so a long picture's long side grows with
    its ratio: one resized past hin's pixel limit is refused first (`hin.extract.resize`)."""

    prepare: ClipPreprocessor

    @property
    def size(self) -> int:
        return self.prepare.size

    def __call__(self, picture: Image.Image) -> ClipPicture:
        width, height = self.prepare.resized_shape(picture.width, picture.height)
        check_resized(Resize("CLIP", picture.width, picture.height, width, height,
                             max_pixels() // self.size ** 2))
        return ClipPicture(self.prepare(picture), picture.height, picture.width,
                           self.prepare.crop_box(picture.width, picture.height))


@register_extractor("clip-grid")
class ClipGridExtractor:
    """CLIP ViT patch-token grid + projected global token for a batch of prepared pictures."""

    name: str
    kind = "grid"

    def __init__(self, model: str = DEFAULT_CLIP, device: str = "auto",
                 precision: str = "fp32", store_as: str = "float16") -> None:
        self.store_as = store_as
        self.storage_dtype = storage_dtype(store_as)
        transformers = transformers_module()
        self.model_name = str(model)
        self.device = resolve_device(device)
        self.precision = resolve_extraction_precision(precision, self.device)
        self.model = load_pretrained(transformers.CLIPVisionModelWithProjection, self.model_name,
                                     self.device, self.precision)
        config = self.model.config
        self.feature_dim = config.hidden_size
        self.global_dim = config.projection_dim
        self.grid_side = config.image_size // config.patch_size
        self.tokens = self.grid_side ** 2
        self.preprocess = ClipPicturePreprocessor(ClipPreprocessor(size=config.image_size))

    @classmethod
    def from_attributes(cls, recorded: dict[str, Any], device: str = "auto",
                        precision: str = "fp32") -> ClipGridExtractor:
        """The extractor that wrote a file with these attributes (see `attributes`)."""
        return cls(str(recorded["model"]), device=device, precision=precision,
                   store_as=str(recorded.get("storage_dtype", "float16")))

    def attributes(self) -> dict[str, Any]:
        return {"extractor": self.name, "kind": self.kind, "model": self.model_name,
                "feature_dim": self.feature_dim, "tokens": self.tokens,
                "global_dim": self.global_dim, "image_size": self.preprocess.size,
                GRID_ROWS: self.grid_side, GRID_COLS: self.grid_side,
                "compute_dtype": COMPUTE_DTYPES[self.precision], "storage_dtype": self.store_as}

    @torch.inference_mode()
    def __call__(self, prepared: Sequence[ClipPicture]) -> list[ImageEntry]:
        pixels = torch.from_numpy(np.stack([p.pixels for p in prepared])).to(self.device,
                                                                            self.model.dtype)
        with extraction_autocast(self.device, self.precision):
            vision = self.model.vision_model(pixel_values=pixels)
            patches = self.model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:])
            embeddings = self.model.visual_projection(vision.pooler_output)
        patches = patches.float().cpu().numpy().astype(self.storage_dtype)
        embeddings = embeddings.float().cpu().numpy().astype(self.storage_dtype)
        return [{"features": grid, "global": embedding,
                 "size": np.array([picture.height, picture.width], dtype=np.int64),
                 "crop": np.array(picture.crop, dtype=np.float32)}
                for grid, embedding, picture in zip(patches, embeddings, prepared)]
