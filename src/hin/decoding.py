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
from typing import Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from hin.config import DecodingConfig, HINConfig
from hin.devices import resolve_precision
from hin.errors import UsageError
from hin.model import HIN, DecoderCache, EncoderOutput


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
    stay float32). Cast once here: faster than decoding under autocast (benchmarks/README.md).
    A model already in that dtype is used as it is; whoever decodes many batches casts once
    and passes the result."""
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


class Stepper(Protocol):
    """What beam search drives: next-word log-probs of every hypothesis, and reordering."""

    def step(self, tokens: Tensor) -> Tensor:
        """tokens [B, K] -> log-probabilities [B, K, V] (float32)."""

    def reorder(self, source: Tensor) -> None:
        """Keep hypotheses `source` [B, K_new] (indices into the current K per image)."""


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
    models = _as_models(model_or_list)
    encoded = [encoded] if isinstance(encoded, EncoderOutput) else list(encoded)
    ensemble = _Ensemble(models, encoded)
    return beam_search_with(ensemble, encoded[0].grid.shape[0], models[0].config,
                            models[0].device, beam_size=beam_size, max_len=max_len,
                            out_size=out_size)


def beam_search_with(stepper: Stepper, batch: int, config: HINConfig, device: torch.device,
                     beam_size: int = 5, max_len: int = 20, out_size: int = 1
                     ) -> tuple[Tensor, Tensor]:
    """The search rule itself over any `Stepper` (the cached decoder here; tests drive it
    with a teacher-forced re-scorer). `config` gives the special token ids."""
    if not 1 <= out_size <= beam_size:
        raise UsageError(f"out_size must be between 1 and beam_size ({beam_size}), got {out_size}")
    require_decodable(config, beam_size, max_len)
    tokens = torch.full((batch, 1), config.bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, device=device)
    alive = torch.ones(batch, 1, dtype=torch.bool, device=device)
    history = torch.empty(batch, 1, 0, dtype=torch.long, device=device)
    history_logprobs = torch.empty(batch, 1, 0, device=device)
    for step in range(max_len):
        logprobs = stepper.step(tokens)                                      # [B, K, V]
        vocab = logprobs.shape[-1]
        if step > 0:
            alive = alive & (tokens != config.eos_id)
        candidates = scores[..., None] + logprobs
        # A finished hypothesis stays as one candidate (extended by <pad>, log-prob 0) with
        # its score. In place: the [B, K, V] tensors are the search's own largest cost.
        candidates.masked_fill_(~alive[..., None], float("-inf"))
        candidates[..., config.pad_id] = torch.where(alive, candidates[..., config.pad_id], scores)

        top_scores, top_index = candidates.reshape(batch, -1).topk(beam_size, dim=-1)
        source, words = top_index // vocab, top_index % vocab
        stepper.reorder(source)
        scores = top_scores
        alive = alive.gather(1, source)
        word_logprobs = logprobs.reshape(batch, -1).gather(1, top_index).masked_fill(~alive, 0.0)
        history = torch.cat((history.gather(1, source[..., None].expand(-1, -1, step)),
                             words[..., None]), dim=-1)
        history_logprobs = torch.cat(
            (history_logprobs.gather(1, source[..., None].expand(-1, -1, step)),
             word_logprobs[..., None]), dim=-1)
        tokens = words
        if not (alive & (words != config.eos_id)).any():
            break

    order = scores.argsort(dim=1, descending=True, stable=True)[:, :out_size]
    index = order[..., None].expand(-1, -1, history.shape[-1])
    return history.gather(1, index), history_logprobs.gather(1, index)


def greedy_search(model_or_list: HIN | Sequence[HIN], grid: Tensor, region: Tensor,
                  max_len: int = 20) -> tuple[Tensor, Tensor]:
    """Most probable word at each step: beam search with one beam. -> ([B, T], [B, T])."""
    ids, logprobs = beam_search(model_or_list, grid, region, beam_size=1, max_len=max_len)
    return ids[:, 0], logprobs[:, 0]


def search(model_or_list: HIN | Sequence[HIN], grid: Tensor, region: Tensor,
           settings: DecodingConfig) -> tuple[Tensor, Tensor]:
    """Beam search as `settings` say (beam size, length, number of captions, precision).
    -> (ids [B, num_captions, T], per-token log-probs [B, num_captions, T]), best first."""
    return beam_search(cast_for_decoding(model_or_list, settings.precision), grid, region,
                       beam_size=settings.beam_size, max_len=settings.max_len,
                       out_size=settings.num_captions)


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
