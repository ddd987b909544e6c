"""Caption decoding: beam search (docs/model.md §7) for one model or an ensemble, and greedy.

Each model's encoder memory is projected once per image and shared by all beams; beams
only carry their own self-attention cache, which is gathered when beams reorder. The
search reproduces the reference's rule exactly: no length normalisation, a finished
hypothesis competes with its unchanged score as a single candidate, top-k over all
(hypothesis, word) pairs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from hin.config import DecodingConfig, HINConfig
from hin.devices import resolve_precision
from hin.errors import UsageError
from hin.model import HIN, DecoderCache, EncoderOutput
from hin.strategies import Stepper, decode_with


def _as_models(model_or_list: HIN | Sequence[HIN]) -> list[HIN]:
    models = [model_or_list] if isinstance(model_or_list, HIN) else list(model_or_list)
    if not models:
        raise UsageError("decoding needs at least one model")
    first = models[0].config
    for other in models[1:]:
        fields = ("vocab_size", "pad_id", "bos_id", "eos_id", "max_len")
        different = [f for f in fields if getattr(other.config, f) != getattr(first, f)]
        if different:
            raise UsageError(f"ensemble members disagree on {different}: they must share one "
                             "vocabulary and its special tokens")
    return models


PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cast_for_decoding(model_or_list: HIN | Sequence[HIN], precision: str) -> list[HIN]:
    """The models as `precision` decodes them: `fp32` the models themselves; `bf16` eval-mode
    copies with bfloat16 weights, so that the encoder output, the cached cross-attention
    keys/values and the self-attention caches are bfloat16 too (log-softmax and beam scores
    stay float32). Cast once here, not at every step as autocast does (measured faster in
    benchmarks/README.md). A model already in that dtype is used as it is; whoever decodes
    many batches casts once and passes the result."""
    cast = []
    for model in _as_models(model_or_list):
        dtype = PRECISION_DTYPES[resolve_precision(precision, model.device)]
        if model.dtype == dtype:
            cast.append(model)
        else:
            cast.append(copy.deepcopy(model).to(dtype).eval())
    return cast


def require_decodable(config: HINConfig, beam_size: int, max_len: int, batch_size: int = 1) -> None:
    """Refuse, before any decoding, settings a model `config` cannot decode with: a beam wider
    than its vocabulary, captions longer than its positions, an empty batch."""
    if beam_size < 1 or beam_size > config.vocab_size:
        raise UsageError(f"beam size {beam_size} is not between 1 and the model's vocabulary size "
                         f"({config.vocab_size} words): give a smaller --beam")
    if not 1 <= max_len <= config.max_len:
        raise UsageError(f"maximum caption length {max_len} is not between 1 and the "
                         f"{config.max_len} positions the model has: give --max-len "
                         f"{config.max_len} or less")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")


class _Ensemble:
    """Steps several models together; their per-step log-probabilities are averaged."""

    def __init__(self, models: list[HIN], encoded: Sequence[EncoderOutput]):
        self.models = models
        self.caches: list[DecoderCache] = [model.init_cache(enc)
                                           for model, enc in zip(models, encoded, strict=True)]

    def step(self, tokens: Tensor) -> Tensor:
        logprobs = []
        for i, model in enumerate(self.models):
            out, self.caches[i] = model.step(tokens.to(model.device), self.caches[i])
            logprobs.append(out.to(tokens.device))
        return logprobs[0] if len(logprobs) == 1 else torch.stack(logprobs).mean(dim=0)

    def reorder(self, source: Tensor) -> None:
        self.caches = [cache.reorder(source.to(cache.region_bias.device)) for cache in self.caches]


@torch.inference_mode()
def beam_search(model_or_list: HIN | Sequence[HIN], grid: Tensor, region: Tensor,
                beam_size: int = 5, max_len: int = 20, out_size: int = 1
                ) -> tuple[Tensor, Tensor]:
    """Beam search over one model or an ensemble (a list: per-step log-probs averaged).

    grid [B, Ng, Dg], region [B, Nr, Dr] -> (ids [B, out_size, T], per-token log-probs
    [B, out_size, T]), hypotheses best first, T <= max_len (the search stops once every
    hypothesis has emitted <eos>). After <eos> ids are <pad> and log-probs 0.
    """
    models = _as_models(model_or_list)
    encoded = [model.encode(grid.to(model.device), region.to(model.device)) for model in models]
    return beam_search_encoded(models, encoded, beam_size=beam_size, max_len=max_len,
                               out_size=out_size)


@torch.inference_mode()
def beam_search_encoded(model_or_list: HIN | Sequence[HIN],
                        encoded: EncoderOutput | Sequence[EncoderOutput],
                        beam_size: int = 5, max_len: int = 20, out_size: int = 1
                        ) -> tuple[Tensor, Tensor]:
    """`beam_search` from encoder outputs already computed (one per model), e.g. the
    encoding SCST also uses for its gradient pass."""
    return decode_encoded(model_or_list, encoded, _beam_settings(beam_size, max_len, out_size))


@torch.inference_mode()
def decode_encoded(model_or_list: HIN | Sequence[HIN],
                   encoded: EncoderOutput | Sequence[EncoderOutput],
                   settings: DecodingConfig) -> tuple[Tensor, Tensor]:
    """Captions as `settings` say (hin.strategies) from encoder outputs already computed (one
    per model) -> (ids [B, num_captions, T], per-token log-probs [B, num_captions, T])."""
    models = _as_models(model_or_list)
    encoded = [encoded] if isinstance(encoded, EncoderOutput) else list(encoded)
    require_decodable(models[0].config, settings.beam_size, settings.max_len)
    return decode_with(_Ensemble(models, encoded), encoded[0].grid.shape[0], models[0].config,
                       models[0].device, settings)


def _beam_settings(beam_size: int, max_len: int, out_size: int) -> DecodingConfig:
    if not 1 <= out_size <= beam_size:
        raise UsageError(f"out_size must be between 1 and beam_size ({beam_size}), got {out_size}")
    return DecodingConfig(beam_size=beam_size, max_len=max_len, num_captions=out_size)


def beam_search_with(stepper: Stepper, batch: int, config: HINConfig, device: torch.device,
                     beam_size: int = 5, max_len: int = 20, out_size: int = 1
                     ) -> tuple[Tensor, Tensor]:
    """The search rule itself over any `Stepper` (the cached decoder here; tests drive it
    with a teacher-forced re-scorer). `config` gives the special token ids."""
    settings = _beam_settings(beam_size, max_len, out_size)
    require_decodable(config, beam_size, max_len)
    return decode_with(stepper, batch, config, device, settings)


def greedy_search(model_or_list: HIN | Sequence[HIN], grid: Tensor, region: Tensor,
                  max_len: int = 20) -> tuple[Tensor, Tensor]:
    """Most probable word at each step: beam search with one beam. -> ([B, T], [B, T])."""
    ids, logprobs = beam_search(model_or_list, grid, region, beam_size=1, max_len=max_len)
    return ids[:, 0], logprobs[:, 0]


def search(model_or_list: HIN | Sequence[HIN], grid: Tensor, region: Tensor,
           settings: DecodingConfig) -> tuple[Tensor, Tensor]:
    """Captions as `settings` say (beam size, length, number of captions, precision, how
    words are chosen). -> (ids [B, num_captions, T], per-token log-probs), best first."""
    models = cast_for_decoding(model_or_list, settings.precision)
    with torch.inference_mode():
        encoded = [model.encode(grid.to(model.device), region.to(model.device))
                   for model in models]
    return decode_encoded(models, encoded, settings)


def caption_batches(model_or_list: HIN | Sequence[HIN], batches: Iterable,
                    to_text: Callable[[list[int]], str], settings: DecodingConfig, *,
                    desc: str = "decoding", progress: bool = True) -> dict[int, str]:
    """Best beam of every image in `batches` (objects with .grid, .region, .image_ids) as
    text, via `to_text` (e.g. a vocabulary's decode). Shared by evaluation and validation."""
    models = cast_for_decoding(model_or_list, settings.precision)
    captions: dict[int, str] = {}
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        sequences, _ = search(models, batch.grid, batch.region, settings)
        for image_id, ids in zip(batch.image_ids, sequences[:, 0].tolist()):
            captions[image_id] = to_text(ids)
    return captions
