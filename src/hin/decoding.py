"""Caption decoding (docs/model.md §7): features -> beams -> caption text, for one model or an
ensemble. The one home of "features to captions": evaluation, validation during training,
`Captioner`, the server and explanations all call `caption` or `caption_batches`.

Entry points, from the most to the least wrapped: `caption` / `caption_batches` (text, with
the settings' post-processing), `beam_search` (ids and log-probs from features),
`beam_search_encoded` (from encoder outputs already computed), `beam_search_steps` (the
search rule itself over any `Stepper`). Greedy decoding is `DecodingConfig(beam_size=1)`.

Each model's encoder memory is projected once per image and shared by all beams; beams
only carry their own self-attention cache, which is gathered when beams reorder. How the
words are chosen (the reference's beam search by default, or the other `DecodingConfig`
options: length penalty, min_len, no_repeat_ngram, diverse groups, sampling) is
hin.strategies'.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from hin.config import DecodingConfig, HINConfig
from hin.devices import resolve_precision
from hin.errors import HINError, UsageError
from hin.metrics import collapse_repeats
from hin.model import HIN, DecoderCache, EncoderOutput
from hin.strategies import Stepper, decode_with


@dataclass(frozen=True)
class Caption:
    text: str
    log_prob: float                  # summed token log-probability: the beam-search score
    ids: tuple[int, ...] = ()        # the hypothesis's word ids before <eos>


@dataclass(frozen=True)
class CaptionedImage:
    """Captions of one picture or image id, best first."""

    source: str
    captions: tuple[Caption, ...]
    unfamiliar: str | None = None     # why the picture looks unlike the training pictures

    @property
    def best(self) -> str:
        return self.captions[0].text

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.source,
                "captions": [{"caption": c.text, "log_prob": round(c.log_prob, 4)}
                             for c in self.captions],
                **({"unfamiliar": self.unfamiliar} if self.unfamiliar else {})}

    def __str__(self) -> str:
        lines = [self.source]
        lines += [f"  {rank}. {c.text}  (log-prob {c.log_prob:.2f})"
                  for rank, c in enumerate(self.captions, start=1)]
        return "\n".join(lines)


class Words(Protocol):
    """What turns ids into text (a `hin.data.vocab.Vocabulary`)."""

    eos_id: int

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> caption text, read up to <eos>."""


def _as_models(model_or_list: HIN | Sequence[HIN]) -> list[HIN]:
    models = [model_or_list] if isinstance(model_or_list, HIN) else list(model_or_list)
    if not models:
        raise UsageError("decoding needs at least one model")
    first = models[0].config
    for other in models[1:]:
        fields = ("vocab_size", "pad_id", "bos_id", "eos_id", "max_positions")
        different = [f for f in fields if getattr(other.config, f) != getattr(first, f)]
        if different:
            raise UsageError(f"ensemble members disagree on {different}: they must share one "
                             "vocabulary and its special tokens")
    return models


def cast_for_decoding(model_or_list: HIN | Sequence[HIN], precision: str) -> list[HIN]:
    """The models as `precision` decodes them: `fp32` the models themselves; `bf16` eval-mode
    copies with bfloat16 weights, so that the encoder output, the cached cross-attention
    keys/values and the self-attention caches are bfloat16 too (log-softmax and beam scores
    stay float32). Cast once here, not at every step as autocast does (measured faster in
    benchmarks/README.md). A model already in bfloat16 is used as it is; whoever decodes
    many batches casts once and passes the result."""
    cast = []
    for model in _as_models(model_or_list):
        low = resolve_precision(precision, model.device) == "bf16" and model.dtype != torch.bfloat16
        cast.append(copy.deepcopy(model).to(torch.bfloat16).eval() if low else model)
    return cast


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


def teacher_forcing_inputs(ids: Tensor | Sequence[Sequence[int]], bos_id: int,
                           pad_id: int | None = None) -> Tensor:
    """Captions' ids -> the decoder inputs that predict them: <bos>, then each caption without
    its last id (word k is predicted at input position k - 1). `ids`: a tensor [..., T] ->
    [..., T]; or one list of ids per caption, padded here with `pad_id` to the longest -> [B, T]
    (at least one position)."""
    if not isinstance(ids, Tensor):
        if pad_id is None:
            raise ValueError("lists of ids need a pad_id to be padded with")
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(row, dtype=torch.long) for row in ids],
                                              batch_first=True, padding_value=pad_id)
    bos = ids.new_full((*ids.shape[:-1], 1), bos_id)
    return torch.cat((bos, ids[..., :-1]), dim=-1)


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
                settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """Captions as `settings` say (beam size, length, number of captions, precision, how words
    are chosen) over one model or an ensemble (a list: per-step log-probs averaged).

    grid [B, Ng, Dg], region [B, Nr, Dr] -> (ids [B, num_captions, T], per-token log-probs
    [B, num_captions, T]), hypotheses best first, T <= max_len (the search stops once every
    hypothesis has emitted <eos>). After <eos> ids are <pad> and log-probs 0. The models are
    cast to `settings.precision` (`cast_for_decoding`; models already cast are used as they are).
    """
    models = cast_for_decoding(model_or_list, settings.precision)
    encoded = [model.encode(grid.to(model.device), region.to(model.device)) for model in models]
    return beam_search_encoded(models, encoded, settings)


@torch.inference_mode()
def beam_search_encoded(model_or_list: HIN | Sequence[HIN],
                        encoded: EncoderOutput | Sequence[EncoderOutput],
                        settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """`beam_search` from encoder outputs already computed (one per model), e.g. the encoding
    SCST also uses for its gradient pass. The models and encodings are used as they are:
    `settings.precision` is applied by `beam_search`, which casts before encoding."""
    models = _as_models(model_or_list)
    encoded = [encoded] if isinstance(encoded, EncoderOutput) else list(encoded)
    ensemble = _Ensemble(models, encoded)
    return beam_search_steps(ensemble, encoded[0].grid.shape[0], models[0].config,
                             models[0].device, settings)


def beam_search_steps(stepper: Stepper, batch: int, config: HINConfig, device: torch.device,
                      settings: DecodingConfig = DecodingConfig()) -> tuple[Tensor, Tensor]:
    """The search rule itself over any `Stepper` (the cached decoder here; tests drive it
    with a teacher-forced re-scorer): beam search, diverse groups or sampling as `settings`
    say (hin.strategies). `config` gives the special token ids."""
    require_decodable(config, settings)
    return decode_with(stepper, batch, config, device, settings)


def caption(model_or_list: HIN | Sequence[HIN], grid: Tensor, region: Tensor, words: Words,
            settings: DecodingConfig = DecodingConfig(),
            names: Sequence[str] | None = None) -> list[CaptionedImage]:
    """Features -> each image's `settings.num_captions` captions, best first, as text (`words`
    decodes ids; repeats collapsed when the settings say so) with their scores. `names`
    name the images (default: their position in the batch)."""
    ids, logprobs = beam_search(model_or_list, grid, region, settings)
    names = names if names is not None else [f"#{i + 1}" for i in range(ids.shape[0])]
    results = []
    for name, hypotheses, scores in zip(names, ids.tolist(), logprobs.sum(-1).tolist(), strict=True):
        if not all(math.isfinite(score) for score in scores):
            raise HINError(f"image {name}: decoding gave a score that is not a number "
                           f"({scores[0]}), so its caption means nothing: "
                           + _nonfinite_cause(model_or_list))
        captions = []
        for tokens, score in zip(hypotheses, scores):
            text = words.decode(tokens)
            kept = tokens[:tokens.index(words.eos_id)] if words.eos_id in tokens else tokens
            captions.append(Caption(collapse_repeats(text) if settings.collapse_repeats else text,
                                    score, tuple(kept)))
        results.append(CaptionedImage(name, tuple(captions)))
    return results


def _nonfinite_cause(model_or_list: HIN | Sequence[HIN]) -> str:
    """Why decoding gave a non-finite score: the weights (a diverged run) or the features."""
    if any(not bool(torch.isfinite(weights).all())
           for model in _as_models(model_or_list) for weights in model.parameters()):
        return ("the model's weights are not all finite (its training diverged: train it "
                "again with a lower train.lr)")
    return ("its features are damaged or far outside what the model was trained on (check "
            "them with `hin data check`, or extract them again)")


def caption_batches(model_or_list: HIN | Sequence[HIN], batches: Iterable[Any], words: Words,
                    settings: DecodingConfig = DecodingConfig(), *, desc: str = "decoding",
                    progress: bool = True) -> dict[int, CaptionedImage]:
    """`caption` over every batch (objects with .grid, .region, .image_ids) -> captions by
    image id. The models are cast to the settings' precision once, for all batches."""
    models = cast_for_decoding(model_or_list, settings.precision)
    captioned: dict[int, CaptionedImage] = {}
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        results = caption(models, batch.grid, batch.region, words, settings,
                          [str(i) for i in batch.image_ids])
        captioned.update(zip(batch.image_ids, results))
    return captioned
