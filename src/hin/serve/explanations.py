"""The attention maps of a served caption, as JSON a page can draw over the picture.

Maps come from `hin.explain.attention_maps` on the same features the caption was decoded
from, fed the best caption's tokens. Geometry (`hin.explain.explanations.picture_geometry`,
`hin explain`'s own rule, from what the extractors return) says where the maps belong on
the picture: the grid's rows x cols and the picture box its cells cover (CLIP sees the
centred square crop), and the region boxes in picture pixels. What an extractor does not
tell is null, with the reason in `missing`, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hin.data.features import ImageGeometry
from hin.decoding import teacher_forcing_inputs
from hin.errors import MissingExtraError, pip_install
from hin.extract.registry import ImageEntry


def map_colours(stops: int = 17) -> dict[str, Any]:
    """hin.explain's MAP_COLORMAP as evenly spaced RGB stops (0-255) for the page, so the
    page's maps and `hin explain`'s figures share one colormap."""
    try:
        import matplotlib
    except ImportError as missing:
        raise MissingExtraError("`hin serve` draws maps with matplotlib's colormaps: "
                                f"{pip_install('serve')}") from missing
    from hin.explain import MAP_COLORMAP

    colormap = matplotlib.colormaps[MAP_COLORMAP]
    return {"name": MAP_COLORMAP,
            "stops": [[round(255 * channel) for channel in colormap(i / (stops - 1))[:3]]
                      for i in range(stops)]}


def explain_batch(captioner: Any, grid: torch.Tensor, region: torch.Tensor,
                  best: Sequence[Sequence[int]], grid_entries: Sequence[ImageEntry],
                  region_entries: Sequence[ImageEntry]) -> list[dict[str, Any]]:
    """Maps of each picture's best caption (`best`: its word ids, `Caption.ids`)."""
    from hin.explain import attention_maps
    from hin.explain.explanations import picture_geometry

    vocab = captioner.vocab
    maps = attention_maps(captioner.model, grid, region,
                          teacher_forcing_inputs(best, vocab.bos_id, vocab.pad_id))
    decoder_grid, decoder_region, decoder_gate = maps.decoder_maps()
    explanations = []
    for b, (grid_entry, region_entry) in enumerate(zip(grid_entries, region_entries)):
        words = [vocab.words[token] for token in best[b]]
        regions = min(len(region_entry["features"]), captioner.max_regions)
        geometry = picture_geometry(captioner, "upload", grid_entry, region_entry)
        explanations.append({
            "words": words,
            "layers": maps.num_layers,
            "encoder_grid": _rounded(maps.encoder_grid[b]),
            "encoder_region": _rounded(maps.encoder_region[b, :, :regions]),
            "decoder_grid": _rounded(decoder_grid[b, :, :len(words)]),
            "decoder_region": _rounded(decoder_region[b, :, :len(words), :regions]),
            "decoder_gate": _rounded(decoder_gate[b, :, :len(words)]),
            "grid": _grid_placement(geometry),
            "regions": (None if geometry.boxes is None else
                        {"boxes": [[round(float(v), 2) for v in box] for box in geometry.boxes[:regions]]}),
            "missing": list(geometry.missing),
        })
    return explanations


def _grid_placement(geometry: ImageGeometry) -> dict[str, Any] | None:
    placement = geometry.grid_placement
    if placement is None:
        return None
    (rows, cols), box = placement
    return {"rows": rows, "cols": cols, "box": [round(v, 2) for v in box]}


def _rounded(values: torch.Tensor) -> list:
    return torch.round(values.float(), decimals=5).tolist()
