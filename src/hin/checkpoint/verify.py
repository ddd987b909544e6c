"""Check an imported reference model's head count against the reference's own captions.

Tensor shapes cannot tell how many attention heads a model has: the same weights split into
4 or 8 heads give two different models, and a wrong `--heads` gives a wrong model without an
error. The reference's own beam-search captions of a few images are what hin's beam search
reproduces, word for word, with the right head count (fp32 beams equal the reference's);
with a wrong one almost none. Where the given count reproduces at most half, the other
counts are tried, to name the one that does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hin.checkpoint.record import RecordError
from hin.config import DataConfig, DecodingConfig, HINConfig
from hin.data.features import FeatureStore, pad_regions, stack_grids
from hin.data.vocab import Vocabulary
from hin.decoding import caption
from hin.metrics import collapse_repeats
from hin.model import HIN

REFERENCE_BEAM = 5          # the reference's evaluation: beam 5, at most 20 words
REFERENCE_MAX_LEN = 20
SMALLEST_HEAD = 8           # head widths below this are not tried


@dataclass(frozen=True)
class HeadsCheck:
    """How many of the reference's captions hin's beam search reproduces, by head count."""

    given: int
    reproduced: dict[int, int]
    images: int

    def passes(self, heads: int) -> bool:
        return 2 * self.reproduced.get(heads, 0) > self.images

    def summary(self, heads: int) -> str:
        return (f"hin's beam search reproduces {self.reproduced[heads]} of the reference's "
                f"{self.images} captions with {heads} heads")


def reference_captions(path: str | Path) -> dict[int, str]:
    """A COCO results file -> caption by image id (the first one of each image)."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise RecordError(f"--verify captions {path} cannot be read as JSON ({error}); give the "
                          "reference's results file: [{\"image_id\": ..., \"caption\": ...}]") from None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("image_id"), int)
            and isinstance(e.get("caption"), str) for e in entries):
        raise RecordError(f"--verify captions {path} is not a COCO results list "
                          "([{\"image_id\": 1, \"caption\": \"...\"}, ...])")
    captions: dict[int, str] = {}
    for entry in entries:
        captions.setdefault(entry["image_id"], entry["caption"])
    if not captions:
        raise RecordError(f"--verify captions {path} holds no captions")
    return captions


def check_heads(build: Callable[[int], HIN], config: HINConfig, vocab: Vocabulary,
                grid: str | Path, region: str | Path, captions: Mapping[int, str],
                beam_size: int = REFERENCE_BEAM) -> HeadsCheck:
    """Decode the feature files' images with the imported model (`build(heads)`) as the
    reference decoded them, and count the captions equal to the reference's `captions`."""
    ids = sorted(captions)
    store = FeatureStore(grid, region, max_regions=DataConfig.max_regions,
                         grid_dim=config.grid_dim, region_dim=config.region_dim)
    try:
        store.require(ids, "--verify")
        arrays = [store[image_id] for image_id in ids]
    finally:
        store.close()
    names = [str(image_id) for image_id in ids]
    grids = torch.from_numpy(stack_grids([a[0] for a in arrays], names).astype(np.float32))
    regions = torch.from_numpy(np.stack([pad_regions(a[1], DataConfig.max_regions,
                                                     config.region_dim) for a in arrays])
                               .astype(np.float32))
    settings = DecodingConfig(beam_size=min(beam_size, config.vocab_size),
                              max_len=min(REFERENCE_MAX_LEN, config.max_positions),
                              collapse_repeats=False)
    expected = [_words(captions[image_id]) for image_id in ids]

    def reproduced(heads: int) -> int:
        with torch.inference_mode():
            results = caption([build(heads)], grids, regions, vocab, settings, names)
        return sum(want in (_words(got.best), _words(collapse_repeats(got.best)))
                   for want, got in zip(expected, results))

    check = HeadsCheck(config.num_heads, {config.num_heads: reproduced(config.num_heads)}, len(ids))
    if check.passes(config.num_heads):
        return check
    others = [h for h in range(1, config.d_model // SMALLEST_HEAD + 1)
              if config.d_model % h == 0 and h != config.num_heads]
    return HeadsCheck(check.given, {**check.reproduced, **{h: reproduced(h) for h in others}},
                      check.images)


def _words(text: str) -> str:
    return " ".join(text.lower().split())


def require_heads(check: HeadsCheck, reference: str | Path) -> str:
    """The line to print when the given head count reproduces the reference's captions;
    else refuse, naming the count that does (if one does)."""
    if check.passes(check.given):
        return f"verified --heads {check.given}: {check.summary(check.given)}"
    best = max(check.reproduced, key=lambda heads: check.reproduced[heads])
    if check.passes(best):
        raise RecordError(f"--heads {check.given} does not fit {reference}: "
                          f"{check.summary(check.given)}, but {check.reproduced[best]} with "
                          f"{best}: import it again with --heads {best}")
    raise RecordError(f"--verify: no head count reproduces the reference's captions "
                      f"({check.summary(check.given)}): are CAPTIONS the reference's own beam "
                      "search (beam --verify-beam) of these very GRID and REGION features?")


def saved_heads(payload: Any) -> int | None:
    """The head count the reference's training script saved with its arguments, if it did
    (an `args`/`opt` entry: a dict or an argparse namespace)."""
    if not isinstance(payload, dict):
        return None
    for entry in ("args", "opt", "hparams"):
        saved = payload.get(entry)
        values = vars(saved) if hasattr(saved, "__dict__") else saved
        if isinstance(values, dict):
            for key in ("head", "heads", "h", "num_heads", "n_heads", "nhead"):
                if isinstance(values.get(key), int):
                    return int(values[key])
    return None
