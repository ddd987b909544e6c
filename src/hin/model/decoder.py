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
    attend_heads,
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


Projection = tuple[Tensor, Tensor]
"""A linear map as (weight [out, in], bias [out]), applied with F.linear."""


def _concatenated(*layers: nn.Linear) -> Projection:
    return torch.cat([layer.weight for layer in layers]), torch.cat([layer.bias for layer in layers])


@dataclass
class ProjectionGroups:
    """A BGAF layer's projections grouped by the tensor they read, each group one matrix
    product: the tokens' self-attention q/k/v; the four queries of s (grid, region, both
    picks); from g its cross query and the direct pick's key/value, likewise from r; the
    crossed pick's key/value of gc and rc together; and the keys/values of the grid and of
    the region memory. 5 products per step instead of 13, 2 per level instead of 8: fewer,
    wider products run faster on a decoding step's few rows (benchmarks/README.md). Built
    from the weights when used (`DecoderLayer.projection_groups`): a training step's
    gradients flow through the concatenation, and a decoding cache keeps its own groups for
    the whole search."""

    tokens: Projection
    context: Projection
    from_g: Projection
    from_r: Projection
    from_crossed: Projection
    grid_memory: Projection
    region_memory: Projection


@dataclass
class DecoderCache:
    """Everything incremental decoding carries from one step to the next.

    memory, region_bias and groups (each layer's `ProjectionGroups`) are per image or per
    layer and never reordered; self_kv holds each
    layer's self-attention keys/values per hypothesis ([B·K, h, t, d_k]; empty before the
    first step); `hidden` marks the <pad> inputs among them ([B·K, 1, 1, t], True = hidden
    from later positions; None while there was none); `length` is t.
    """

    memory: list[LayerMemory]
    region_bias: Tensor
    self_kv: list[KeyValue]
    hidden: Tensor | None
    length: int
    groups: list[ProjectionGroups]

    def reorder(self, source: Tensor) -> DecoderCache:
        """Keep hypotheses `source` [B, K_new] (indices into the current K per image)."""
        batch = source.shape[0]
        current = self.self_kv[0].key.shape[0] // batch
        flat = (source + torch.arange(batch, device=source.device)[:, None] * current).reshape(-1)
        self_kv = [KeyValue(kv.key.index_select(0, flat), kv.value.index_select(0, flat))
                   for kv in self.self_kv]
        hidden = None if self.hidden is None else self.hidden.index_select(0, flat)
        return DecoderCache(self.memory, self.region_bias, self_kv, hidden, self.length, self.groups)


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

    def project_memory(self, grid: Tensor, region: Tensor, groups: ProjectionGroups) -> LayerMemory:
        """The keys/values of the four attentions over this level (grid [B, Ng, d], region
        [B, Nr, d]), laid out [B, h, N, d_k] in memory: read at every decoding step, never
        copied again."""
        d = grid.shape[-1]

        def split(att: Attention, key: Tensor, value: Tensor) -> KeyValue:
            return KeyValue(att.split_heads(key), att.split_heads(value)).contiguous()

        # One level of the encoder output is a strided view: as [B·N, d] rows it is one matrix
        # product (as [B, N, d] PyTorch copies the weights once per image for a batched one).
        grid_key, grid_value, rcg_key, rcg_value = torch.split(
            F.linear(grid.reshape(-1, d), *groups.grid_memory).reshape(*grid.shape[:-1], -1), d, dim=-1)
        region_key, region_value, gcr_key, gcr_value = torch.split(
            F.linear(region.reshape(-1, d), *groups.region_memory).reshape(*region.shape[:-1], -1), d, dim=-1)
        return LayerMemory(
            grid=split(self.grid_att, grid_key, grid_value),
            region=split(self.region_att, region_key, region_value),
            grid_cross_region=split(self.grid_cross_region, gcr_key, gcr_value),
            region_cross_grid=split(self.region_cross_grid, rcg_key, rcg_value),
        )

    def projection_groups(self) -> ProjectionGroups:
        """This layer's projections grouped by what they read, from its weights as they are."""
        return ProjectionGroups(
            tokens=_concatenated(self.self_att.q_proj, self.self_att.k_proj, self.self_att.v_proj),
            context=_concatenated(self.grid_att.q_proj, self.region_att.q_proj,
                                  self.pick_direct.q_proj, self.pick_crossed.q_proj),
            from_g=_concatenated(self.grid_cross_region.q_proj, self.pick_direct.k_proj,
                               self.pick_direct.v_proj),
            from_r=_concatenated(self.region_cross_grid.q_proj, self.pick_direct.k_proj,
                                 self.pick_direct.v_proj),
            from_crossed=_concatenated(self.pick_crossed.k_proj, self.pick_crossed.v_proj),
            grid_memory=_concatenated(self.grid_att.k_proj, self.grid_att.v_proj,
                                      self.region_cross_grid.k_proj, self.region_cross_grid.v_proj),
            region_memory=_concatenated(self.region_att.k_proj, self.region_att.v_proj,
                                        self.grid_cross_region.k_proj, self.grid_cross_region.v_proj),
        )

    def forward(self, x: Tensor, keep: Tensor | None, past: KeyValue | None, self_bias: Tensor | None,
                memory: LayerMemory, region_bias: Tensor, groups: ProjectionGroups,
                trace: AttentionTrace | None = None) -> tuple[Tensor, KeyValue]:
        """x [B, K, T, d] new tokens; keep [B, K, T, 1] (0 at padding; None: no padding, as
        in most decoding steps, where multiplying by ones is skipped); past: self-attention
        keys/values of the earlier tokens per hypothesis [B·K, h, t, d_k] (None: none);
        self_bias [B·K, 1, T, t + T]. -> (output [B, K, T, d], the keys/values of all t + T
        tokens). A `trace` receives the direct grid/region attention and the fusion gate z."""
        batch, hyps, steps, d = x.shape
        tokens = x.reshape(batch * hyps, steps, d)
        q, k, v = torch.split(F.linear(tokens, *groups.tokens), d, dim=-1)
        heads = self.self_att.split_heads     # every attention here has the same heads
        kv = KeyValue(heads(k), heads(v))
        if past is not None:
            kv = KeyValue(torch.cat((past.key, kv.key), dim=2), torch.cat((past.value, kv.value), dim=2))
        s = self.self_att.finish(tokens, attend_heads(heads(q), kv, self_bias))
        s = s.reshape(batch, hyps * steps, d)     # an image's tokens query its memory together
        kept = _zero_padding(None if keep is None else keep.reshape(batch, hyps * steps, 1))
        s = kept(s)
        q_grid, q_region, q_direct, q_crossed = torch.split(F.linear(s, *groups.context), d, dim=-1)
        g = kept(self.grid_att.finish(s, attend_heads(
            heads(q_grid), memory.grid, probabilities=None if trace is None else trace.decoder_grid)))
        r = kept(self.region_att.finish(s, attend_heads(
            heads(q_region), memory.region, region_bias,
            probabilities=None if trace is None else trace.decoder_region)))
        q_gc, k_g, v_g = torch.split(F.linear(g, *groups.from_g), d, dim=-1)
        q_rc, k_r, v_r = torch.split(F.linear(r, *groups.from_r), d, dim=-1)
        gc = kept(self.grid_cross_region.finish(g, attend_heads(heads(q_gc), memory.grid_cross_region,
                                                             region_bias)))
        rc = kept(self.region_cross_grid.finish(r, attend_heads(heads(q_rc), memory.region_cross_grid)))
        crossed_kv = F.linear(torch.stack((gc, rc)), *groups.from_crossed)
        k_gc, v_gc = torch.split(crossed_kv[0], d, dim=-1)
        k_rc, v_rc = torch.split(crossed_kv[1], d, dim=-1)
        direct = kept(self.pick_direct(s, q_direct, (k_g, v_g), (k_r, v_r)))
        crossed = kept(self.pick_crossed(s, q_crossed, (k_gc, v_gc), (k_rc, v_rc)))
        z = torch.sigmoid(self.gate(s + direct + crossed))
        if trace is not None:
            trace.decoder_gate.append(z.float())
        fused = self.proj_direct(direct) * z + self.proj_crossed(crossed) * (1 - z)
        y = kept(self.norm(s + self.dropout(fused)))
        out = kept(self.ff(y))
        return out.reshape(batch, hyps, steps, d), kv


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
        groups = [layer.projection_groups() for layer in self.bgaf_layers]
        memory = [layer.project_memory(*enc.level(i), groups[i]) for i, layer in enumerate(self.bgaf_layers)]
        return DecoderCache(memory, enc.region_bias, [], None, 0, groups)

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
            groups = layer.projection_groups()
            memory = layer.project_memory(*enc.level(i), groups)
            x, _ = layer(x, keep, None, self_bias, memory, region_bias, groups, trace)
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
            x, kv = layer(x, kept, cache.self_kv[i] if cache.self_kv else None, self_bias, memory,
                          cache.region_bias, cache.groups[i])
            self_kv.append(kv)
        logprobs = self._logprobs(x[:, :, 0])
        return logprobs, DecoderCache(cache.memory, cache.region_bias, self_kv, hidden, length, cache.groups)
