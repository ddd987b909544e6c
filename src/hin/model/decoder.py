"""BGAF decoder (docs/model.md §5) and its decoding cache.

Tokens are laid out [B, K, T]: K hypotheses (beams) per image. Cross-attention treats
an image's K·T tokens as one query set over that image's memory, so the encoder
keys/values are projected once per image and shared by every beam without copying.
Self-attention runs per hypothesis and can be extended one step at a time from a
`DecoderCache`, which is a value passed in and returned — never state on the module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hin.config import HINConfig
from hin.errors import UsageError
from hin.model.encoder import EncoderOutput
from hin.model.layers import (
    Attention,
    AttentionTrace,
    FeedForward,
    KeyValue,
    PickAttention,
    mask_to_bias,
)


def sinusoid_table(rows: int, d_model: int) -> Tensor:
    """P[p, 2i] = sin(p / 10000^(2i/d)), P[p, 2i+1] = cos(...), row 0 zeros (padding)."""
    position = torch.arange(rows, dtype=torch.float64)[:, None]
    frequency = torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(rows, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position / frequency)
    table[:, 1::2] = torch.cos(position / frequency[: d_model // 2])
    table[0] = 0
    return table.float()


@dataclass
class LayerMemory:
    """One decoder layer's projections of its encoder level, computed once per image."""

    grid: KeyValue             # grid_att over G_i
    region: KeyValue           # region_att over R_i
    grid_cross_region: KeyValue   # over R_i
    region_cross_grid: KeyValue   # over G_i


@dataclass
class DecoderCache:
    """Everything incremental decoding carries from one step to the next.

    memory and region_bias are per image ([B, ...]) and never reordered; self_kv holds each
    layer's self-attention keys/values per hypothesis ([B·K, h, t, d_k]; empty before the
    first step); `hidden` marks the <pad> inputs among them ([B·K, 1, 1, t], True = hidden
    from later positions; None while there was none); `length` is t.
    """

    memory: list[LayerMemory]
    region_bias: Tensor
    self_kv: list[KeyValue]
    hidden: Tensor | None
    length: int

    def reorder(self, source: Tensor) -> DecoderCache:
        """Keep hypotheses `source` [B, K_new] (indices into the current K per image)."""
        batch = source.shape[0]
        current = self.self_kv[0].key.shape[0] // batch
        flat = (source + torch.arange(batch, device=source.device)[:, None] * current).reshape(-1)
        self_kv = [KeyValue(kv.key.index_select(0, flat), kv.value.index_select(0, flat))
                   for kv in self.self_kv]
        hidden = None if self.hidden is None else self.hidden.index_select(0, flat)
        return DecoderCache(self.memory, self.region_bias, self_kv, hidden, self.length)


class DecoderLayer(nn.Module):
    """Bottom-up Gated Attention Fusion layer reading one encoder level."""

    def __init__(self, config: HINConfig):
        super().__init__()
        d, h, p = config.d_model, config.num_heads, config.dropout
        self.self_att = Attention(d, h, p)
        self.grid_att = Attention(d, h, p)
        self.region_att = Attention(d, h, p)
        self.grid_cross_region = Attention(d, h, p)
        self.region_cross_grid = Attention(d, h, p)
        self.pick_direct = PickAttention(d, h, p)
        self.pick_crossed = PickAttention(d, h, p)
        self.gate = nn.Linear(d, d)
        self.proj_direct = nn.Linear(d, d)
        self.proj_crossed = nn.Linear(d, d)
        self.dropout = nn.Dropout(p)
        self.norm = nn.LayerNorm(d)
        self.ff = FeedForward(d, config.d_ff, p)

    def project_memory(self, grid: Tensor, region: Tensor) -> LayerMemory:
        return LayerMemory(
            grid=self.grid_att.project_kv(grid).contiguous(),
            region=self.region_att.project_kv(region).contiguous(),
            grid_cross_region=self.grid_cross_region.project_kv(region).contiguous(),
            region_cross_grid=self.region_cross_grid.project_kv(grid).contiguous(),
        )

    def forward(self, x: Tensor, keep: Tensor | None, self_kv: KeyValue, self_bias: Tensor | None,
                memory: LayerMemory, region_bias: Tensor, trace: AttentionTrace | None = None) -> Tensor:
        """x [B, K, T, d] new tokens; keep [B, K, T, 1] (0 at padding; None: no padding, as
        in most decoding steps, where multiplying by ones is skipped); self_kv: keys/values
        of all visible tokens per hypothesis [B·K, h, t, d_k]; self_bias [B·K, 1, T, t].
        A `trace` receives the direct grid/region attention and the fusion gate z."""
        batch, hyps, steps, d = x.shape
        s = self.self_att.attend(x.reshape(batch * hyps, steps, d), self_kv, self_bias)
        s = s.reshape(batch, hyps * steps, d)     # an image's tokens query its memory together
        kept = _zero_padding(None if keep is None else keep.reshape(batch, hyps * steps, 1))
        s = kept(s)
        g = kept(self.grid_att.attend(s, memory.grid,
                                      probabilities=None if trace is None else trace.decoder_grid))
        r = kept(self.region_att.attend(s, memory.region, region_bias,
                                        probabilities=None if trace is None else trace.decoder_region))
        gc = kept(self.grid_cross_region.attend(g, memory.grid_cross_region, region_bias))
        rc = kept(self.region_cross_grid.attend(r, memory.region_cross_grid))
        direct = kept(self.pick_direct(s, g, r))
        crossed = kept(self.pick_crossed(s, gc, rc))
        z = torch.sigmoid(self.gate(s + direct + crossed))
        if trace is not None:
            trace.decoder_gate.append(z.float())
        fused = self.proj_direct(direct) * z + self.proj_crossed(crossed) * (1 - z)
        y = kept(self.norm(s + self.dropout(fused)))
        out = kept(self.ff(y))
        return out.reshape(batch, hyps, steps, d)


def _zero_padding(keep: Tensor | None) -> Callable[[Tensor], Tensor]:
    """x -> x with the padding positions' outputs zeroed (`keep` 0 there; None: no padding)."""
    if keep is None:
        return lambda x: x
    return lambda x: x * keep


class Decoder(nn.Module):
    """Word + position embeddings, L BGAF layers (layer i reads level i), output head."""

    position_table: Tensor     # a buffer: frozen, saved with the weights

    def __init__(self, config: HINConfig):
        super().__init__()
        self.config = config
        self.word_emb = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.register_buffer("position_table", torch.zeros(config.max_positions + 1, config.d_model))
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def reset_position_table(self) -> None:
        """Fill the frozen table as configured (docs/model.md §1): Xavier-random or sinusoid."""
        rows, d = self.position_table.shape
        if self.config.position_table == "sinusoid":
            self.position_table.copy_(sinusoid_table(rows, d))
        else:
            nn.init.xavier_uniform_(self.position_table)

    @property
    def bgaf_layers(self) -> Sequence[DecoderLayer]:
        """`layers` as what they are (a ModuleList holds plain Modules to a type checker)."""
        return cast("Sequence[DecoderLayer]", self.layers)

    def init_cache(self, enc: EncoderOutput) -> DecoderCache:
        """Project each level's memory once; start with empty self-attention state."""
        memory = [layer.project_memory(*enc.level(i)) for i, layer in enumerate(self.bgaf_layers)]
        return DecoderCache(memory, enc.region_bias, [], None, 0)

    def _embed(self, tokens: Tensor, positions: Tensor, length: int) -> Tensor:
        if length > self.config.max_positions:
            raise UsageError(f"a sequence of {length} tokens exceeds the model's max_positions "
                             f"{self.config.max_positions}")
        embedded: Tensor = self.word_emb(tokens) + self.position_table[positions]
        return embedded

    def _logprobs(self, x: Tensor) -> Tensor:
        return F.log_softmax(self.head(x).float(), dim=-1)

    def forward(self, tokens: Tensor, enc: EncoderOutput, trace: AttentionTrace | None = None) -> Tensor:
        """Teacher forcing: tokens [B, K, T] -> log-probabilities [B, K, T, V]. A `trace`
        receives each layer's attention (queries: an image's K·T tokens, hypothesis-major)."""
        batch, hyps, steps = tokens.shape
        keep = (tokens != self.config.pad_id)
        positions = torch.arange(1, steps + 1, device=tokens.device).expand_as(tokens) * keep
        x = self._embed(tokens, positions, steps)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=tokens.device).triu(1)
        hidden = causal | ~keep.reshape(batch * hyps, 1, 1, steps)
        self_bias = mask_to_bias(hidden, x.dtype)
        keep = keep[..., None].to(x.dtype)
        region_bias = enc.region_bias
        for i, layer in enumerate(self.bgaf_layers):
            memory = layer.project_memory(*enc.level(i))
            self_kv = layer.self_att.project_kv(x.reshape(batch * hyps, steps, -1))
            x = layer(x, keep, self_kv, self_bias, memory, region_bias, trace)
        return self._logprobs(x)

    def step(self, tokens: Tensor, cache: DecoderCache) -> tuple[Tensor, DecoderCache]:
        """One token per hypothesis: tokens [B, K] -> ([B, K, V], cache).

        Exactly what `forward` computes at that position, <pad> inputs included: a <pad>
        key is hidden from every later position, the <pad> position's outputs are zero (so
        the next-word distribution after it is uniform), and it takes its position index like
        any token, so the tokens after it keep theirs.
        """
        batch, hyps = tokens.shape
        length = cache.length + 1
        keep = tokens != self.config.pad_id
        x = self._embed(tokens, keep * length, length)[:, :, None]                      # [B, K, 1, d]
        hidden = cache.hidden
        if hidden is not None or not keep.all():
            new_hidden = ~keep.reshape(batch * hyps, 1, 1, 1)
            past = (hidden if hidden is not None
                    else new_hidden.new_zeros(batch * hyps, 1, 1, cache.length))
            hidden = torch.cat((past, new_hidden), dim=-1)
        self_bias = None if hidden is None else mask_to_bias(hidden, x.dtype)
        kept = None if hidden is None else keep[..., None, None].to(x.dtype)   # None: no <pad>
        self_kv = []
        for i, (layer, memory) in enumerate(zip(self.bgaf_layers, cache.memory)):
            kv = layer.self_att.project_kv(x.reshape(batch * hyps, 1, -1))
            if cache.self_kv:
                earlier = cache.self_kv[i]
                kv = KeyValue(torch.cat((earlier.key, kv.key), dim=2),
                              torch.cat((earlier.value, kv.value), dim=2))
            self_kv.append(kv)
            x = layer(x, kept, kv, self_bias, memory, cache.region_bias)
        logprobs = self._logprobs(x[:, :, 0])
        return logprobs, DecoderCache(cache.memory, cache.region_bias, self_kv, hidden, length)
