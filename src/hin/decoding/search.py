"""How decoding chooses the next words (`DecodingConfig`): one search loop over any `Stepper`,
with the way words are chosen as its policy: beam search (the reference's rule, optionally
with a length penalty), diverse beam groups, or sampling. The step-level rule (`min_len`,
`no_repeat_ngram`) is applied alike under every policy.

With the default settings beam search is exactly the reference's rule: no length
normalisation, a finished hypothesis competes with its unchanged score as a single
candidate, top-k over all (hypothesis, word) pairs. This module knows nothing of models,
precision or words: it sees log-probabilities and ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from hin.config import DecodingConfig, HINConfig
from hin.errors import UsageError

Choice = tuple[Tensor | None, Tensor, Tensor, Tensor]
"""What a policy chooses at a step: (source [B, K'] per image, None: each hypothesis keeps
its row; words [B, K']; the hypotheses' scores after it [B, K']; the chosen words'
log-probs [B, K'], any value where the hypothesis had already finished)."""


class Stepper(Protocol):
    """What a search drives: next-word log-probs of every hypothesis, and reordering."""

    def step(self, tokens: Tensor) -> Tensor:
        """tokens [B, K] -> log-probabilities [B, K, V] (float32), a tensor of its own that
        the search may change in place."""

    def reorder(self, source: Tensor) -> None:
        """Keep hypotheses `source` [B, K_new] (indices into the current K per image)."""


class Policy(Protocol):
    """How the next words are chosen; the loop in `search` does everything else."""

    def choose(self, logprobs: Tensor, scores: Tensor, lengths: Tensor, alive: Tensor,
               history: Tensor) -> Choice:
        """logprobs [B, K, V] (the stepper's own: may be changed in place), the hypotheses'
        scores, lengths, alive flags [B, K] and words so far [B, K, t] -> `Choice`."""

    def final(self, scores: Tensor, lengths: Tensor) -> Tensor:
        """Which hypotheses are returned, best first: [B, N] indices into K."""


def restrict(scores: Tensor, history: Tensor, settings: DecodingConfig, eos_id: int) -> Tensor:
    """The step-level rule, in place: scores [B, K, V] of the words that may follow each
    hypothesis `history` [B, K, t] (words so far, without <bos>) get -inf where the word is
    banned: <eos> before `min_len` words, and a word that would complete an n-gram the
    hypothesis already holds (`no_repeat_ngram` = n). Returns `scores`."""
    step = history.shape[-1]
    if step < settings.min_len:
        scores[..., eos_id] = float("-inf")
    n = settings.no_repeat_ngram
    if n and step >= n:
        windows = history.unfold(-1, n, 1)                        # [B, K, step - n + 1, n]
        prefix = history[..., step - n + 1:]                       # [B, K, n - 1]
        match = (windows[..., :-1] == prefix[..., None, :]).all(dim=-1)
        vocab = scores.shape[-1]
        # Unmatched windows write into a spare column, dropped after.
        banned = torch.zeros((*scores.shape[:-1], vocab + 1), dtype=torch.bool,
                             device=scores.device)
        banned.scatter_(-1, torch.where(match, windows[..., -1], vocab), True)
        scores.masked_fill_(banned[..., :vocab], float("-inf"))
    return scores


def _require_some_word(scores: Tensor, alive: Tensor, settings: DecodingConfig) -> None:
    """A hypothesis for which the step-level rule bans every word cannot go on: say so."""
    if (settings.min_len or settings.no_repeat_ngram) and \
            (alive & ~scores.isfinite().any(dim=-1)).any():
        raise UsageError(f"--min-len {settings.min_len} with --no-repeat-ngram "
                         f"{settings.no_repeat_ngram} leaves no word to choose: lower them")


def _penalised(scores: Tensor, lengths: Tensor, alpha: float) -> Tensor:
    """score / length^alpha (alpha 0: the scores themselves, untouched)."""
    return scores if alpha == 0 else scores / lengths.clamp(min=1).to(scores.dtype) ** alpha


def search(stepper: Stepper, batch: int, config: HINConfig, device: torch.device,
           settings: DecodingConfig) -> tuple[Tensor, Tensor]:
    """Captions of `batch` images as `settings` say -> (ids [B, N, T], per-token log-probs
    [B, N, T]), N = settings.num_captions, best first (by score / length^length_penalty),
    T <= max_len; after <eos> ids are <pad> and log-probs 0. `config` gives the special ids.
    The search stops once every hypothesis has emitted <eos>."""
    policy: Policy = (_Sampling(batch, device, config, settings) if settings.sample
                      else _Beam(config, settings))
    eos = config.eos_id
    tokens = torch.full((batch, 1), config.bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, 1, device=device)
    lengths = torch.zeros(batch, 1, dtype=torch.long, device=device)
    alive = torch.ones(batch, 1, dtype=torch.bool, device=device)
    steps: list[tuple[Tensor | None, Tensor, Tensor]] = []      # (source, words, log-probs)
    history = torch.empty(batch, 1, 0, dtype=torch.long, device=device)
    for step in range(settings.max_len):
        logprobs = stepper.step(tokens)                                      # [B, K, V]
        if step > 0:
            alive = alive & (tokens != eos)
        source, words, scores, word_logprobs = policy.choose(logprobs, scores, lengths, alive,
                                                             history)
        if source is not None:
            stepper.reorder(source)
            alive, lengths = alive.gather(1, source), lengths.gather(1, source)
        lengths = lengths + alive
        steps.append((source, words, word_logprobs.masked_fill(~alive, 0.0)))
        if settings.no_repeat_ngram:     # only the n-gram rule reads the words so far
            history = torch.cat((history if source is None else history.gather(
                1, source[..., None].expand(-1, -1, step)), words[..., None]), dim=-1)
        else:
            history = history.new_empty(*words.shape, step + 1)
        tokens = words
        if not (alive & (words != eos)).any():
            break
    ids, token_logprobs = _backtrack(steps)
    index = policy.final(scores, lengths)[..., None].expand(-1, -1, ids.shape[-1])
    return ids.gather(1, index), token_logprobs.gather(1, index)


def _backtrack(steps: list[tuple[Tensor | None, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Each final hypothesis's words and log-probs [B, K, T], read back from the last step
    through the rows each step came from."""
    row: Tensor | None = None
    ids, logprobs = [], []
    for source, words, word_logprobs in reversed(steps):
        if row is None:
            ids.append(words)
            logprobs.append(word_logprobs)
        else:
            ids.append(words.gather(1, row))
            logprobs.append(word_logprobs.gather(1, row))
        if source is not None:
            row = source if row is None else source.gather(1, row)
    return torch.stack(ids[::-1], dim=-1), torch.stack(logprobs[::-1], dim=-1)


class _Beam:
    """Beam search; with `diversity_groups` G > 1, G groups of beam_size / G beams searched
    one after the other at each step, a word scoring `diversity_strength` less in a group
    for every earlier group's hypothesis that chose it at this step (Hamming diversity,
    Vijayakumar et al. 2018); then one caption per group."""

    def __init__(self, config: HINConfig, settings: DecodingConfig) -> None:
        self.pad_id, self.eos_id, self.settings = config.pad_id, config.eos_id, settings
        self.per_group = settings.beam_size // settings.diversity_groups

    def choose(self, logprobs: Tensor, scores: Tensor, lengths: Tensor, alive: Tensor,
               history: Tensor) -> Choice:
        settings = self.settings
        batch, _, vocab = logprobs.shape
        candidates = restrict(scores[..., None] + logprobs, history, settings, self.eos_id)
        _require_some_word(candidates, alive, settings)
        # A finished hypothesis stays as one candidate (extended by <pad>, log-prob 0) with
        # its score. In place: the [B, K, V] tensors are the search's own largest cost.
        if not alive.all():
            candidates.masked_fill_(~alive[..., None], float("-inf"))
            candidates[..., self.pad_id] = torch.where(alive, candidates[..., self.pad_id], scores)
        ranked = _penalised(candidates, (lengths + alive)[..., None], settings.length_penalty)
        if settings.diversity_groups == 1:
            _, top_index = ranked.reshape(batch, -1).topk(settings.beam_size, dim=-1)
            source, words = top_index // vocab, top_index % vocab
        else:
            source, words = _diverse_choice(ranked, alive, self.per_group,
                                            settings.diversity_groups, settings.diversity_strength)
            top_index = source * vocab + words
        return (source, words, candidates.reshape(batch, -1).gather(1, top_index),
                logprobs.reshape(batch, -1).gather(1, top_index))

    def final(self, scores: Tensor, lengths: Tensor) -> Tensor:
        settings = self.settings
        final = _penalised(scores, lengths, settings.length_penalty)
        batch, groups = final.shape[0], settings.diversity_groups
        if groups == 1:
            return final.argsort(dim=1, descending=True, stable=True)[:, :settings.num_captions]
        # Each group's best hypothesis stands for it.
        best_in_group = final.reshape(batch, groups, self.per_group).argmax(dim=-1)
        candidates = best_in_group + torch.arange(groups, device=final.device) * self.per_group
        order = final.gather(1, candidates).argsort(dim=1, descending=True, stable=True)
        return candidates.gather(1, order[:, :settings.num_captions])


def _diverse_choice(ranked: Tensor, alive: Tensor, per_group: int, groups: int,
                    strength: float) -> tuple[Tensor, Tensor]:
    """(source, words) [B, G * per_group] of one diverse beam step over ranked [B, K, V]."""
    batch, current, vocab = ranked.shape
    chosen = torch.zeros(batch, vocab, device=ranked.device)   # earlier groups' words this step
    sources, words = [], []
    for group in range(groups):
        # At the first step every group extends the one <bos> hypothesis.
        rows = torch.arange(group * per_group, (group + 1) * per_group, device=ranked.device) \
            if current > 1 else torch.zeros(1, dtype=torch.long, device=ranked.device)
        group_ranked = ranked[:, rows]
        if group:
            group_ranked = group_ranked - strength * chosen[:, None, :]
        _, top_index = group_ranked.reshape(batch, -1).topk(per_group, dim=-1)
        source, word = rows[top_index // vocab], top_index % vocab
        chosen.scatter_add_(1, word, alive.gather(1, source).float())
        sources.append(source)
        words.append(word)
    return torch.cat(sources, dim=1), torch.cat(words, dim=1)


class _Sampling:
    """`num_captions` captions per image, each word drawn from the model's distribution
    (after the step-level rule, `temperature`, `top_k` and `top_p`). With a `seed`, every
    image draws from its own generator seeded with it, so an image's captions depend on its
    features and the seed only, never on the other images of its batch."""

    def __init__(self, batch: int, device: torch.device, config: HINConfig,
                 settings: DecodingConfig) -> None:
        self.pad_id, self.eos_id, self.settings = config.pad_id, config.eos_id, settings
        self.noise = _noise_source(batch, settings.num_captions, device, settings.seed)

    def choose(self, logprobs: Tensor, scores: Tensor, lengths: Tensor, alive: Tensor,
               history: Tensor) -> Choice:
        settings, count = self.settings, self.settings.num_captions
        # In place: a chosen word is never a banned one, so its log-prob is the model's.
        allowed = restrict(logprobs, history, settings, self.eos_id)
        _require_some_word(allowed, alive, settings)
        source = None
        if allowed.shape[1] != count:      # the first step: every draw extends the one <bos>
            source = torch.zeros(allowed.shape[0], count, dtype=torch.long, device=allowed.device)
            allowed, alive, scores = (allowed.expand(-1, count, -1), alive.expand(-1, count),
                                      scores.expand(-1, count))
        words = torch.where(alive, _draw(allowed, settings, self.noise()), self.pad_id)
        word_logprobs = allowed.gather(-1, words[..., None]).squeeze(-1).masked_fill(~alive, 0.0)
        return source, words, scores + word_logprobs, word_logprobs

    def final(self, scores: Tensor, lengths: Tensor) -> Tensor:
        final = _penalised(scores, lengths, self.settings.length_penalty)
        return final.argsort(dim=1, descending=True, stable=True)


def _noise_source(batch: int, count: int, device: torch.device,
                  seed: int | None) -> Callable[[], Tensor]:
    """A function giving uniform noise [B, N]: torch's generator, or one per image seeded."""
    if seed is None:
        return lambda: torch.rand(batch, count, device=device)
    generators = [torch.Generator(device=device).manual_seed(seed) for _ in range(batch)]
    return lambda: torch.stack([torch.rand(count, generator=generator, device=device)
                                for generator in generators])


def _draw(scores: Tensor, settings: DecodingConfig, uniform: Tensor) -> Tensor:
    """One word per row of scores [B, N, V] (log-probs, banned words -inf) by inverting the
    cumulative distribution at `uniform` [B, N], after temperature, top-k and top-p."""
    logits = scores / settings.temperature
    if settings.top_k:
        kept = logits.topk(min(settings.top_k, logits.shape[-1]), dim=-1).indices
        mask = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, kept, False)
        logits = logits.masked_fill(mask, float("-inf"))
    probs = logits.softmax(dim=-1)
    if settings.top_p < 1:
        # The most probable words until their mass reaches top_p (the first always stays).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= settings.top_p
        probs = probs.masked_fill(outside.scatter(-1, order, outside), 0.0)
    cumulative = probs.cumsum(dim=-1)
    target = (uniform * cumulative[..., -1])[..., None]
    words = torch.searchsorted(cumulative, target, right=True).squeeze(-1)
    return words.clamp(max=scores.shape[-1] - 1)
