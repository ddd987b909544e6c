"""HIN encoder: input projections, CTFA layers and the hierarchical interaction (docs/model.md §2–4).

Ng and Nr are read from the inputs; the interaction alternates cross-type and same-type
steps for any number of levels (the reference stops working at five).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from hin.config import HINConfig
from hin.model.layers import Attention, AttentionTrace, FeedForward, mask_to_bias


@dataclass
class EncoderOutput:
    """What the decoder reads: all levels concatenated along the token axis.

    grid [B, L·Ng, d], region [B, L·Nr, d], region_mask bool [B, 1, 1, Nr] (True = padding).
    """

    grid: Tensor
    region: Tensor
    region_mask: Tensor
    num_levels: int

    def level(self, index: int) -> tuple[Tensor, Tensor]:
        """(grid, region) of level `index` (0-based): [B, Ng, d], [B, Nr, d]."""
        grid = self.grid.chunk(self.num_levels, dim=1)[index]
        region = self.region.chunk(self.num_levels, dim=1)[index]
        return grid, region

    def detach(self) -> EncoderOutput:
        """The same values, cut from the autograd graph."""
        return EncoderOutput(self.grid.detach(), self.region.detach(), self.region_mask,
                             self.num_levels)

    @property
    def region_bias(self) -> Tensor:
        return mask_to_bias(self.region_mask, self.grid.dtype)


class InputProjection(nn.Sequential):
    """LayerNorm(dropout(relu(x W + b))): raw feature size -> d_model."""

    def __init__(self, in_dim: int, d_model: int, dropout: float):
        super().__init__(nn.Linear(in_dim, d_model), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.LayerNorm(d_model))

    @property
    def dtype(self) -> torch.dtype:
        """The weights' type (float32, or bfloat16 cast for decoding): inputs are cast to it."""
        return cast(nn.Linear, self[0]).weight.dtype


class CTFALayer(nn.Module):
    """Cross-Type Feature Alignment: a shared global token aligns grid and region streams."""

    def __init__(self, config: HINConfig):
        super().__init__()
        d, h, p = config.d_model, config.num_heads, config.dropout
        self.grid_token = nn.Parameter(torch.empty(1, 1, d))
        self.region_token = nn.Parameter(torch.empty(1, 1, d))
        self.grid_global = Attention(d, h, p, residual=False)
        self.region_global = Attention(d, h, p, residual=False)
        self.region_asks_grid = Attention(d, h, p, residual=False)
        self.grid_asks_region = Attention(d, h, p, residual=False)
        self.global_gate = nn.Linear(2 * d, 2)
        self.global_norm = nn.LayerNorm(d)
        self.global_fc = nn.Linear(d, d)
        self.grid_self = Attention(d, h, p)
        self.region_self = Attention(d, h, p)
        self.grid_ff = FeedForward(d, config.d_ff, p)
        self.region_ff = FeedForward(d, config.d_ff, p)

    def forward(self, grid: Tensor, region: Tensor, region_bias: Tensor,
                trace: AttentionTrace | None = None) -> tuple[Tensor, Tensor]:
        """grid [B, Ng, d], region [B, Nr, d], region_bias [B, 1, 1, Nr] -> same shapes.
        A `trace` receives the global tokens' attention over grid and regions."""
        g = self.grid_global.shared_query(self.grid_token, grid,
                                          probabilities=None if trace is None else trace.encoder_grid)
        r = self.region_global.shared_query(self.region_token, region, region_bias,
                                            probabilities=None if trace is None else trace.encoder_region)
        a = self.region_asks_grid(r, g)
        b = self.grid_asks_region(g, r)
        w = self.global_gate(torch.cat((a, b), dim=-1)).float().softmax(dim=-1)
        mixed = (w[..., :1] * a + w[..., 1:] * b).to(self.global_norm.weight.dtype)
        shared = torch.relu(self.global_fc(self.global_norm(mixed)))

        grid = torch.cat((shared, g, grid), dim=1)
        region = torch.cat((shared, r, region), dim=1)
        keep_two = region_bias.new_zeros(*region_bias.shape[:-1], 2)
        region_bias = torch.cat((keep_two, region_bias), dim=-1)
        grid = self.grid_ff(self.grid_self(grid, grid))
        region = self.region_ff(self.region_self(region, region, region_bias))
        return grid[:, 2:], region[:, 2:]


class Encoder(nn.Module):
    """Projections, L CTFA layers, then the hierarchical interaction across levels."""

    def __init__(self, config: HINConfig):
        super().__init__()
        d, h, p = config.d_model, config.num_heads, config.dropout
        self.config = config
        self.grid_proj = InputProjection(config.grid_dim, d, p)
        self.region_proj = InputProjection(config.region_dim, d, p)
        self.layers = nn.ModuleList(CTFALayer(config) for _ in range(config.num_layers))
        steps = config.num_layers - 1
        self.attend_regions = nn.ModuleList(Attention(d, h, p) for _ in range(steps))
        self.attend_grid = nn.ModuleList(Attention(d, h, p) for _ in range(steps))

    def forward(self, grid: Tensor, region: Tensor,
                trace: AttentionTrace | None = None) -> EncoderOutput:
        """grid [B, Ng, Dg], region [B, Nr, Dr] (raw features; zero rows = padding)."""
        region_mask = (region.abs().sum(dim=-1) == 0)[:, None, None, :]
        dtype = self.grid_proj.dtype
        region_bias = mask_to_bias(region_mask, dtype)
        grid = self.grid_proj(grid.to(dtype))
        region = self.region_proj(region.to(dtype))

        grid_levels, region_levels = [], []
        for layer in self.layers:
            grid, region = layer(grid, region, region_bias, trace)
            grid_levels.append(grid)
            region_levels.append(region)

        hier_grid, hier_region = [grid_levels[0]], [region_levels[0]]
        for step, (grid, region) in enumerate(zip(grid_levels[1:], region_levels[1:])):
            previous_grid, previous_region = hier_grid[-1], hier_region[-1]
            if step % 2 == 0:   # cross-type: grid asks regions, regions ask grid
                hier_grid.append(self.attend_regions[step](previous_grid, region, region_bias))
                hier_region.append(self.attend_grid[step](previous_region, grid))
            else:               # same-type: each stream asks its own next level
                hier_grid.append(self.attend_grid[step](previous_grid, grid))
                hier_region.append(self.attend_regions[step](previous_region, region, region_bias))

        return EncoderOutput(
            grid=torch.cat(hier_grid, dim=1),
            region=torch.cat(hier_region, dim=1),
            region_mask=region_mask,
            num_levels=len(self.layers),
        )
