"""The models that decode together: one or several sharing one vocabulary, cast once for the
precision they decode in, with the settings checked against them once.

`Ensemble` is the single entry of models into decoding: it resolves a precision and casts
(keeping each cast copy, so a server or an evaluation casts once however many batches it
decodes) and it checks settings against the models (once per settings). It steps the cast
models together for the search, averaging their per-step log-probabilities. It never
chooses words (hin.decoding.search) and never reads files.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from hin.config import DecodingConfig, HINConfig
from hin.devices import resolve_precision
from hin.errors import UsageError
from hin.model import HIN, DecoderCache, EncoderOutput

SHARED_FIELDS = ("vocab_size", "pad_id", "bos_id", "eos_id", "max_positions")


def require_decodable(config: HINConfig, settings: DecodingConfig, batch_size: int = 1) -> None:
    """Refuse, before any decoding, settings a model `config` cannot decode with: a beam wider
    than its vocabulary, captions longer than its positions, an empty batch."""
    if settings.beam_size > config.vocab_size:
        raise UsageError(f"beam size {settings.beam_size} is not between 1 and the model's "
                         f"vocabulary size ({config.vocab_size} words): give a smaller --beam")
    if settings.max_len > config.max_positions:
        raise UsageError(f"maximum caption length {settings.max_len} is not between 1 and the "
                         f"{config.max_positions} positions the model has: give --max-len "
                         f"{config.max_positions} or less")
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")


class Ensemble:
    """One model or several (their per-step log-probs averaged), as decoding uses them."""

    def __init__(self, model_or_list: HIN | Sequence[HIN]) -> None:
        models = [model_or_list] if isinstance(model_or_list, HIN) else list(model_or_list)
        if not models or not all(isinstance(model, HIN) for model in models):
            raise UsageError("decoding needs a HIN model or a non-empty list of them, got "
                             f"{type(model_or_list).__name__}")
        first = models[0].config
        for other in models[1:]:
            different = [f for f in SHARED_FIELDS if getattr(other.config, f) != getattr(first, f)]
            if different:
                raise UsageError(f"ensemble members disagree on {different}: they must share one "
                                 "vocabulary and its special tokens")
        self.models = tuple(models)
        self._cast: dict[str, tuple[HIN, ...]] = {}
        self._checked: set[tuple[int, int]] = set()    # what require_decodable reads

    @property
    def config(self) -> HINConfig:
        return self.models[0].config

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    def cast(self, precision: str) -> tuple[HIN, ...]:
        """The models as `precision` decodes them, cast on first use and kept: `fp32` the models
        themselves; `bf16` eval-mode copies with bfloat16 weights, so that the encoder output,
        the cached cross-attention keys/values and the self-attention caches are bfloat16 too
        (log-softmax and beam scores stay float32). Cast once, not at every step as autocast
        does (measured faster in benchmarks/README.md); a model already in bfloat16 is used as
        it is. `auto` and the precision it resolves to share one copy."""
        resolved = resolve_precision(precision, self.device)
        if resolved not in self._cast:
            self._cast[resolved] = tuple(
                copy.deepcopy(model).to(torch.bfloat16).eval()
                if resolved == "bf16" and model.dtype != torch.bfloat16 else model
                for model in self.models)
        return self._cast[resolved]

    def check(self, settings: DecodingConfig, batch_size: int = 1) -> None:
        """`require_decodable` for the members (which share its fields), once per beam size and
        length: a server's sampled requests, each with its own seed, add nothing to remember."""
        key = (settings.beam_size, settings.max_len)
        if key not in self._checked or batch_size < 1:
            require_decodable(self.config, settings, batch_size)
            self._checked.add(key)

    def prepare(self, settings: DecodingConfig, batch_size: int = 1) -> tuple[HIN, ...]:
        """The entry of decoding: `settings` checked, the models cast to their precision."""
        self.check(settings, batch_size)
        return self.cast(settings.precision)


def as_ensemble(models: HIN | Sequence[HIN] | Ensemble) -> Ensemble:
    return models if isinstance(models, Ensemble) else Ensemble(models)


class EnsembleStepper:
    """Steps models together over their encodings (one per model, as the models made them);
    their per-step log-probabilities are averaged (one model: its own, untouched)."""

    def __init__(self, models: Sequence[HIN], encoded: Sequence[EncoderOutput]) -> None:
        self.models = list(models)
        self.caches: list[DecoderCache] = [model.init_cache(enc)
                                           for model, enc in zip(models, encoded, strict=True)]

    def step(self, tokens: Tensor) -> Tensor:
        if len(self.models) == 1:
            logprobs, self.caches[0] = self.models[0].step(tokens, self.caches[0])
            return logprobs
        outputs = []
        for i, model in enumerate(self.models):
            out, self.caches[i] = model.step(tokens.to(model.device), self.caches[i])
            outputs.append(out.to(tokens.device))
        return torch.stack(outputs).mean(dim=0)

    def reorder(self, source: Tensor) -> None:
        self.caches = [cache.reorder(source.to(cache.region_bias.device)) for cache in self.caches]
