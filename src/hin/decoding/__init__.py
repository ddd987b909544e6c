"""Caption decoding (docs/model.md §7): features -> ids -> captions, for one model or an
ensemble. The one home of "features to captions": evaluation, validation during training,
`Captioner`, the server and explanations all call `caption` or `caption_batches`.

The face: `caption` / `caption_batches` (text, with the settings' post-processing), `decode`
(ids and log-probs from features), `decode_encoded` (from encoder outputs already computed).
Each enters through `Ensemble.prepare`, where the settings are checked against the models and
the models cast to the settings' precision, once. Greedy decoding is
`DecodingConfig(beam_size=1)`. Inside: `captions` (ids -> words -> text), `ensemble` (the
models, cast once, stepped together) and `search` (the one loop; beam, diverse groups and
sampling are its policies).

Each model's encoder memory is projected once per image and shared by all hypotheses, which
only carry their own self-attention cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from hin.config import DecodingConfig, HINConfig
from hin.decoding.captions import (
    Caption,
    CaptionedImage,
    Words,
    captioned_images,
    check_names,
    check_words,
    hypothesis_ids,
    teacher_forcing_inputs,
)
from hin.decoding.ensemble import Ensemble, EnsembleStepper, as_ensemble, require_decodable
from hin.decoding.search import Stepper, restrict, search
from hin.errors import HINError
from hin.model import HIN, EncoderOutput

__all__ = ["Caption", "CaptionedImage", "Ensemble", "Stepper", "Words", "beam_search",
           "beam_search_encoded", "beam_search_steps", "caption", "caption_batches", "decode",
           "decode_encoded", "hypothesis_ids", "require_decodable", "restrict", "search",
           "teacher_forcing_inputs"]

Models = HIN | Sequence[HIN] | Ensemble
"""One model, a list of them (an ensemble), or an `Ensemble` that keeps its cast copies."""


@torch.inference_mode()
def decode(models: Models, grid: Tensor | np.ndarray, region: Tensor | np.ndarray,
           settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """Captions as `settings` say (beam size, length, number of captions, precision, how words
    are chosen) over one model or an ensemble (per-step log-probs averaged).

    grid [B, Ng, Dg], region [B, Nr, Dr] -> (ids [B, num_captions, T], per-token log-probs
    [B, num_captions, T]), hypotheses best first, T <= max_len (the search stops once every
    hypothesis has emitted <eos>). After <eos> ids are <pad> and log-probs 0. The models are
    cast to `settings.precision` (an `Ensemble` keeps its copies for the next call)."""
    ensemble = as_ensemble(models)
    return _decode(ensemble.prepare(settings), grid, region, settings)


def _decode(models: Sequence[HIN], grid: Tensor | np.ndarray, region: Tensor | np.ndarray,
            settings: DecodingConfig) -> tuple[Tensor, Tensor]:
    # Each model's encode checks the features, converts them and moves them to its device.
    encoded = [model.encode(grid, region) for model in models]
    return _search(models, encoded, settings)


def _search(models: Sequence[HIN], encoded: Sequence[EncoderOutput],
            settings: DecodingConfig) -> tuple[Tensor, Tensor]:
    return search(EnsembleStepper(models, encoded), encoded[0].grid.shape[0], models[0].config,
                  models[0].device, settings)


@torch.inference_mode()
def decode_encoded(models: HIN | Sequence[HIN], encoded: EncoderOutput | Sequence[EncoderOutput],
                   settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """`decode` from encoder outputs already computed (one per model), e.g. the encoding SCST
    also uses for its gradient pass. The models and encodings are used as they are (not cast:
    `settings.precision` is applied where the encoding was made)."""
    ensemble = as_ensemble(models)
    ensemble.check(settings)
    encoded = [encoded] if isinstance(encoded, EncoderOutput) else list(encoded)
    return _search(ensemble.models, encoded, settings)


def caption(models: Models, grid: Tensor | np.ndarray, region: Tensor | np.ndarray, words: Words,
            settings: DecodingConfig = DecodingConfig(),
            names: Sequence[str] | None = None) -> list[CaptionedImage]:
    """Features -> each image's `settings.num_captions` captions, best first, as text (`words`
    decodes ids; repeats collapsed when the settings say so) with their scores. `names`
    name the images (default: their position in the batch)."""
    ensemble = as_ensemble(models)
    cast = ensemble.prepare(settings)
    grid, region = ensemble.models[0].check_features(grid, region)
    check_words(words, ensemble.config)
    names = check_names(names, grid.shape[0])
    return _caption(cast, grid, region, words, settings, names)


@torch.inference_mode()
def _caption(models: Sequence[HIN], grid: Tensor, region: Tensor, words: Words,
             settings: DecodingConfig, names: Sequence[str]) -> list[CaptionedImage]:
    ids, logprobs = _decode(models, grid, region, settings)
    _refuse_nonfinite(logprobs, names, models)
    return captioned_images(ids, logprobs, words, settings, names)


def _refuse_nonfinite(logprobs: Tensor, names: Sequence[str], models: Sequence[HIN]) -> None:
    """A caption whose score is not a number means nothing: an error naming the image, and
    whether the weights (a diverged run) or the features are to blame."""
    scores = logprobs.sum(-1)
    if bool(scores.isfinite().all()):
        return
    row, column = (int(index) for index in (~scores.isfinite()).nonzero()[0])
    if any(not bool(torch.isfinite(weights).all()) for model in models for weights in model.parameters()):
        cause = ("the model's weights are not all finite (its training diverged: train it "
                 "again with a lower train.lr)")
    else:
        cause = ("its features are damaged or far outside what the model was trained on (check "
                 "them with `hin data check`, or extract them again)")
    raise HINError(f"image {names[row]}: decoding gave a score that is not a number "
                   f"({float(scores[row, column])}), so its caption means nothing: {cause}")


def caption_batches(models: Models, batches: Iterable[Any], words: Words,
                    settings: DecodingConfig = DecodingConfig(), *, desc: str = "decoding",
                    progress: bool = True) -> dict[int, CaptionedImage]:
    """`caption` over every batch (objects with .grid, .region, .image_ids) -> captions by
    image id. The settings are checked and the models cast once, for all batches."""
    ensemble = as_ensemble(models)
    cast = ensemble.prepare(settings)
    check_words(words, ensemble.config)
    captioned: dict[int, CaptionedImage] = {}
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        results = _caption(cast, batch.grid, batch.region, words, settings,
                           [str(i) for i in batch.image_ids])
        captioned.update(zip(batch.image_ids, results))
    return captioned


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"hin.decoding.{old} is deprecated and will be removed in the next release: "
                  f"use hin.decoding.{new} (the same arguments and results)",
                  DeprecationWarning, stacklevel=3)


def beam_search(models: Models, grid: Tensor, region: Tensor,
                settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """Deprecated name of `decode` (it also samples and searches diverse groups)."""
    _deprecated("beam_search", "decode")
    return decode(models, grid, region, settings)


def beam_search_encoded(models: HIN | Sequence[HIN],
                        encoded: EncoderOutput | Sequence[EncoderOutput],
                        settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """Deprecated name of `decode_encoded`."""
    _deprecated("beam_search_encoded", "decode_encoded")
    return decode_encoded(models, encoded, settings)


def beam_search_steps(stepper: Stepper, batch: int, config: HINConfig, device: torch.device,
                      settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """Deprecated name of `search` (which no longer checks `settings` against `config`: the
    entries above do)."""
    _deprecated("beam_search_steps", "search")
    require_decodable(config, settings)
    return search(stepper, batch, config, device, settings)
