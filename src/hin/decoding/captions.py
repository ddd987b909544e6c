"""From a search's ids to what people read: a hypothesis's ids -> its words -> its text.

The one rule for "the words of a hypothesis" lives here (`hypothesis_ids`): the ids it
produced before its first <eos>, every one of them (an untrained model may produce <pad> or
<unk> as a word; the decoder then read it as such, so maps and teacher forcing use it too).
The text leaves the special tokens out and may collapse repeated words; it never decides
where a caption ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from hin.config import DecodingConfig, HINConfig
from hin.errors import UsageError
from hin.metrics import collapse_repeats


class Words(Protocol):
    """What turns ids into words and text (a `hin.data.vocab.Vocabulary`)."""

    eos_id: int

    @property
    def words(self) -> Sequence[str]:
        """The word of each id."""

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> caption text, read up to <eos>, special tokens left out."""


@dataclass(frozen=True)
class Caption:
    text: str
    log_prob: float                  # summed token log-probability: the beam-search score
    ids: tuple[int, ...] = ()        # the hypothesis's ids before <eos> (`hypothesis_ids`)
    words: tuple[str, ...] = ()      # the word of each of `ids`


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


def check_words(words: object, config: HINConfig) -> None:
    """Refuse `words` that cannot name this model's ids: not a vocabulary, or one of another
    size (its ids would name other words)."""
    listed, eos = getattr(words, "words", None), getattr(words, "eos_id", None)
    if not callable(getattr(words, "decode", None)) or not isinstance(listed, Sequence) \
            or not isinstance(eos, int):
        raise UsageError("words must be a hin.data.vocab.Vocabulary (ids -> words), got "
                         f"{type(words).__name__}")
    if len(listed) != config.vocab_size or eos != config.eos_id:
        raise UsageError(f"words: a vocabulary of {len(listed)} words (<eos> = {eos}) for a "
                         f"model of {config.vocab_size} (<eos> = {config.eos_id}): give the "
                         "vocabulary the model was trained with")


def check_names(names: Sequence[object] | None, batch: int) -> list[str]:
    """One name per image as text (image ids become their digits; default: the image's
    position, `#1`, `#2`, ...)."""
    if names is None:
        return [f"#{i + 1}" for i in range(batch)]
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise UsageError(f"names must be a list with one name per image, got {type(names).__name__}")
    if len(names) != batch:
        raise UsageError(f"names gives {len(names)} names for {batch} images: give one per image "
                         "(or none)")
    return [str(name) for name in names]


def hypothesis_ids(tokens: Sequence[int], eos_id: int) -> tuple[int, ...]:
    """The ids a hypothesis produced: those before its first <eos> (all, when it has none)."""
    tokens = [int(token) for token in tokens]
    return tuple(tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens)


def make_caption(tokens: Sequence[int], score: float, words: Words,
                 settings: DecodingConfig) -> Caption:
    """One hypothesis's ids -> its words and text (repeats collapsed when `settings` say so)."""
    ids = hypothesis_ids(tokens, words.eos_id)
    text = words.decode(ids)
    return Caption(collapse_repeats(text) if settings.collapse_repeats else text, score, ids,
                   tuple(words.words[i] for i in ids))


def captioned_images(ids: Tensor, logprobs: Tensor, words: Words, settings: DecodingConfig,
                     names: Sequence[str]) -> list[CaptionedImage]:
    """A search's ids and per-token log-probs [B, N, T] -> each image's captions, best first."""
    scores = logprobs.sum(-1).tolist()
    return [CaptionedImage(name, tuple(make_caption(tokens, score, words, settings)
                                       for tokens, score in zip(hypotheses, image_scores)))
            for name, hypotheses, image_scores in zip(names, ids.tolist(), scores, strict=True)]


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
