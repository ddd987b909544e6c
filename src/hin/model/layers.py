"""HIN's building blocks (docs/model.md §1): attention, feed-forward, and the two-candidate pick.

Attention is split into its parts (projections, `attend_heads`, `finish`), so that the
decoder can project the constant encoder memory once per image and reuse it at every step
and for every beam, and project several queries that read one tensor in one product.
Nothing here knows about captions, files or checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_VALUE = -1e9
"""Added to attention scores of hidden keys (docs/model.md §1): finite, so a fully padded row is
uniform instead of NaN. bfloat16 holds it (as -999292928); a narrower type gets its own
most negative finite value."""


FUSED_MIN_SCORES = 128 * 128
"""bfloat16 attention without autograd with at least this many scores per head (the encoder's
258 x 258 grid self-attention) runs PyTorch's fused kernel, about twice as fast there on a
CPU; smaller ones (decoding's few queries, the hierarchy's 256 x 50) are faster on the
explicit path below, and so is training (benchmarks/README.md)."""


def mask_to_bias(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Boolean mask (True = hidden) -> additive attention bias of `dtype`."""
    fill = max(MASK_VALUE, torch.finfo(dtype).min)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, fill)


@dataclass
class AttentionTrace:
    """Attention probabilities collected for `hin.explain`, each [B, h, Q, N] in float32.

    Passed down only when someone asks for the maps; the normal path passes nothing and
    never forms the decoder's probability matrices (they stay inside
    scaled_dot_product_attention); the global tokens' weights ([B, h, N], one query) are
    formed either way.
    """

    encoder_grid: list[Tensor] = field(default_factory=list)     # global grid token, per CTFA layer
    encoder_region: list[Tensor] = field(default_factory=list)   # global region token, per CTFA layer
    decoder_grid: list[Tensor] = field(default_factory=list)     # grid_att, per BGAF layer
    decoder_region: list[Tensor] = field(default_factory=list)   # region_att, per BGAF layer
    decoder_gate: list[Tensor] = field(default_factory=list)     # fusion gate z [B, Q, d], per BGAF layer


def attention_probabilities(q: Tensor, key: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q kᵀ / sqrt(d_k) + bias) in float32: what scaled_dot_product_attention weighs
    the values with. q [B, h, Q, d_k], key [B, h, N, d_k] -> [B, h, Q, N]."""
    scores = q.float() @ key.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.float()
    return scores.softmax(dim=-1)


class KeyValue:
    """Projected keys and values, heads split: each [B, h, N, d_k]."""

    __slots__ = ("key", "value")

    def __init__(self, key: Tensor, value: Tensor):
        self.key = key
        self.value = value

    def contiguous(self) -> KeyValue:
        """The same keys/values laid out [B, h, N, d_k] in memory: attention over a memory
        that is read at every decoding step then never copies it again."""
        return KeyValue(self.key.contiguous(), self.value.contiguous())


class _HeadProjections(nn.Module):
    """Query/key/value/output projections (biases start at 0, docs/model.md §6), dropout, LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.zeros_(proj.bias)


class Attention(_HeadProjections):
    """Multi-head attention + dropout + optional residual + LayerNorm (always applied).

    out = LayerNorm(query + dropout(o)) with the residual, LayerNorm(dropout(o)) without.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float, residual: bool = True):
        super().__init__(d_model, num_heads, dropout)
        self.residual = residual

    def project_kv(self, key: Tensor, value: Tensor | None = None) -> KeyValue:
        """Project keys/values [B, N, d] once; `value` defaults to `key` (self/cross attention
        over one memory, the only use in HIN)."""
        value = key if value is None else value
        return KeyValue(self.split_heads(self.k_proj(key)), self.split_heads(self.v_proj(value)))

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, N, d] -> [B, h, N, d_k]"""
        return torch.unflatten(x, -1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def attend(self, query: Tensor, kv: KeyValue, bias: Tensor | None = None,
               probabilities: list[Tensor] | None = None) -> Tensor:
        """query [B, Q, d] over projected `kv`; `bias` broadcasts to [B, h, Q, N] (additive).
        With a `probabilities` list (the explain path), the attention probabilities
        [B, h, Q, N] are appended to it; the output is computed the same way either way."""
        return self.finish(query, attend_heads(self.split_heads(self.q_proj(query)), kv, bias, probabilities))

    def finish(self, query: Tensor, heads: Tensor) -> Tensor:
        """The attended values of each head [B, h, Q, d_k] -> output projection, dropout,
        residual (if any) and LayerNorm: the rest of `attend` once its query was projected
        (the decoder projects several queries that read one tensor in one product)."""
        out = self.dropout(self.out_proj(heads.transpose(1, 2).flatten(-2)))
        normed: Tensor = self.norm(query + out if self.residual else out)
        return normed

    def forward(self, query: Tensor, memory: Tensor, bias: Tensor | None = None,
                probabilities: list[Tensor] | None = None) -> Tensor:
        return self.attend(query, self.project_kv(memory), bias, probabilities)

    def shared_query(self, token: Tensor, memory: Tensor, bias: Tensor | None = None,
                     probabilities: list[Tensor] | None = None) -> Tensor:
        """`forward` for one query that every image shares (a learned token [1, 1, d]) over
        memory [B, N, d] -> [B, 1, d], without projecting the memory's keys and values: a
        head's score of x_n is q·(W_k x_n + b_k) = (W_kᵀ q)·x_n + q·b_k, and its output
        Σ p_n (W_v x_n + b_v) = W_v (Σ p_n x_n) + b_v. The memory rows are read against h
        columns (one per head) instead of being projected to 2·d (CTFA's global tokens). The
        constant q·b_k, which softmax ignores, is still added: it keeps b_k in the graph as
        in `forward` (its gradient is then what `forward` gives it, and distributed training
        expects every parameter to take part)."""
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_proj(token).reshape(heads, 1, head_dim)
        asked = (q @ self.k_proj.weight.reshape(heads, head_dim, -1)).squeeze(1)       # [h, d]
        constant = (q.squeeze(1) * self.k_proj.bias.reshape(heads, head_dim)).sum(dim=-1)   # [h]
        scores = ((memory @ asked.T.to(memory.dtype)).float() + constant.float())
        scores = scores.transpose(1, 2) / math.sqrt(head_dim)
        if bias is not None:
            scores = scores + bias.float().squeeze(1)                                    # [B, h, N]
        weights = scores.softmax(dim=-1)
        if probabilities is not None:
            probabilities.append(weights[:, :, None])
        mixed = weights.to(memory.dtype) @ memory                                        # [B, h, d]
        values = torch.einsum("bhd,hkd->bhk", mixed, self.v_proj.weight.reshape(heads, head_dim, -1))
        values = values + self.v_proj.bias.reshape(heads, head_dim)
        return self.finish(token.expand(memory.shape[0], -1, -1), values[:, :, None])


def attend_heads(q: Tensor, kv: KeyValue, bias: Tensor | None = None,
              probabilities: list[Tensor] | None = None) -> Tensor:
    """The attended values of each head: q [B, h, Q, d_k] over `kv` -> [B, h, Q, d_k];
    `bias` broadcasts to [B, h, Q, N]. With a `probabilities` list (the explain path), the
    attention probabilities [B, h, Q, N] are appended to it."""
    fused_is_faster = (not torch.is_grad_enabled()
                       and q.shape[-2] * kv.key.shape[-2] >= FUSED_MIN_SCORES)
    if q.dtype == torch.float32 or fused_is_faster:
        heads = F.scaled_dot_product_attention(q, kv.key, kv.value, attn_mask=bias)
    else:
        heads = _low_precision_attention(q, kv, bias)
    if probabilities is not None:
        probabilities.append(attention_probabilities(q, kv.key, bias))
    return heads


def _low_precision_attention(q: Tensor, kv: KeyValue, bias: Tensor | None) -> Tensor:
    """Attention in bfloat16 (autocast or bfloat16 weights): products in bfloat16, bias and
    softmax in float32. (PyTorch's fused CPU kernel is several times slower than this in
    bfloat16 training and slower at decoding's few queries.) Scaled and biased in place: the
    float32 scores are the largest tensors of the encoder's self-attention."""
    scores = (q @ kv.key.to(q.dtype).transpose(-1, -2)).float().mul_(1 / math.sqrt(q.shape[-1]))
    if bias is not None:
        scores = scores.add_(bias)
    return scores.softmax(dim=-1).to(q.dtype) @ kv.value.to(q.dtype)


class FeedForward(nn.Module):
    """LayerNorm(x + dropout(W2 · dropout(relu(W1 x)))) (docs/model.md §1)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)
        self.inner_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.inner_dropout(self.fc1(x).relu_())   # in place: one large buffer fewer
        out: Tensor = self.norm(x + self.dropout(self.fc2(hidden)))
        return out


class PickAttention(_HeadProjections):
    """Each token attends over its own two candidates (docs/model.md §1, "Pick"), with the residual.

    For token s_t and candidates (a_t, b_t): per head, softmax over the two scores
    q_t·k(a_t) and q_t·k(b_t), then the weighted values, output projection, dropout,
    residual and LayerNorm — attention over a sequence of length two per token.
    """

    def forward(self, query: Tensor, q: Tensor, first: tuple[Tensor, Tensor],
                second: tuple[Tensor, Tensor]) -> Tensor:
        """query [..., d], its projected q and each candidate's projected (key, value), each
        [..., d] -> [..., d]. The caller projects (q_proj, k_proj, v_proj): the decoder makes
        them in one product with other projections that read the same tensor."""
        heads = (self.num_heads, self.head_dim)
        k = torch.unflatten(torch.stack((first[0], second[0]), dim=-2), -1, heads)   # [..., 2, h, d_k]
        v = torch.unflatten(torch.stack((first[1], second[1]), dim=-2), -1, heads)
        # Products and sums over d_k, not einsum: as matrix products a token's two scores are
        # a batch of 1 x 2 products, slow per call in bfloat16 on a CPU (benchmarks/README.md).
        scores = (torch.unflatten(q, -1, heads)[..., None, :, :] * k).sum(dim=-1) / math.sqrt(self.head_dim)
        weights = scores.float().softmax(dim=-2).to(v.dtype)   # [..., 2, h]; float32 under autocast too
        out = (weights[..., None] * v).sum(dim=-3).flatten(-2)
        normed: Tensor = self.norm(query + self.dropout(self.out_proj(out)))
        return normed
