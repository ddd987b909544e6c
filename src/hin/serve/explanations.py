"""The attention maps of a served caption, as JSON a page can draw over the picture.

Maps come from `hin.explain.attention_maps` on the same features the caption was decoded
from, fed the best caption's tokens. Geometry says where the maps belong on the picture: the
grid's rows x cols and the picture box its cells cover (CLIP sees the centred square crop),
and the region boxes in picture pixels. What an extractor does not tell is left out with a
note, never guessed.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from hin.extract.images import ClipPreprocessor
from hin.extract.pipeline import ImageEntry


def explain_available() -> bool:
    """hin.explain (the attention-map API) is part of this installation."""
    return importlib.util.find_spec("hin.explain") is not None


def explain_batch(captioner: Any, grid: torch.Tensor, region: torch.Tensor, best: torch.Tensor,
                  pictures: Sequence[Image.Image], grid_entries: Sequence[ImageEntry],
                  region_entries: Sequence[ImageEntry]) -> list[dict[str, Any]]:
    """Maps of each picture's best caption `best` [B, T] (search's ids: words, <eos>, <pad>)."""
    from hin.explain import attention_maps

    config = captioner.model.config
    bos = torch.full((best.shape[0], 1), config.bos_id, dtype=best.dtype)
    maps = attention_maps(captioner.model, grid, region, torch.cat((bos, best[:, :-1].cpu()), 1))
    grid_extractor = captioner.extractors()[0]
    explanations = []
    for b, (picture, grid_entry, region_entry) in enumerate(zip(pictures, grid_entries,
                                                              region_entries)):
        words = []
        for token in best[b].tolist():
            if token in (config.eos_id, config.pad_id):
                break
            words.append(captioner.vocab.words[token])
        regions = min(len(region_entry["features"]), captioner.max_regions)
        explanation: dict[str, Any] = {
            "words": words,
            "layers": maps.num_layers,
            "encoder_grid": _rounded(maps.encoder_grid[b]),
            "encoder_region": _rounded(maps.encoder_region[b, :, :regions]),
            "decoder_grid": _rounded(maps.decoder_grid[b, :, :len(words)]),
            "decoder_region": _rounded(maps.decoder_region[b, :, :len(words), :regions]),
            "decoder_gate": _rounded(maps.decoder_gate[b, :, :len(words)]),
        }
        explanation.update(_grid_geometry(grid_extractor, picture, len(grid_entry["features"])))
        explanation.update(_region_geometry(region_entry, regions))
        explanations.append(explanation)
    return explanations


def _rounded(values: torch.Tensor) -> list:
    return torch.round(values.float(), decimals=5).tolist()


def _grid_geometry(extractor: Any, picture: Image.Image, cells: int) -> dict[str, Any]:
    side = math.isqrt(cells)
    preprocess = getattr(extractor, "preprocess", None)
    if not isinstance(preprocess, ClipPreprocessor) or side * side != cells:
        return {"grid": None, "grid_note": f"the grid extractor {extractor.name!r} does not say "
                                           "how its cells lie on the picture"}
    width, height = picture.size
    resized_width, resized_height = preprocess.resized_shape(width, height)
    left = round((resized_width - preprocess.size) / 2)
    top = round((resized_height - preprocess.size) / 2)
    x_scale, y_scale = width / resized_width, height / resized_height
    box = [left * x_scale, top * y_scale, (left + preprocess.size) * x_scale,
           (top + preprocess.size) * y_scale]
    return {"grid": {"rows": side, "cols": side, "box": [round(v, 2) for v in box]}}


def _region_geometry(entry: ImageEntry, regions: int) -> dict[str, Any]:
    if "boxes" not in entry:
        return {"regions": None, "regions_note": "the region extractor gives no boxes"}
    boxes = [[round(float(v), 2) for v in box] for box in entry["boxes"][:regions]]
    return {"regions": {"boxes": boxes}}
