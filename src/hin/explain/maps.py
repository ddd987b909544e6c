"""Where HIN looks: the model's own attention probabilities as maps (docs/model.md §3, §5).

    from hin.explain import attention_maps
    maps = attention_maps(model, grid, region, tokens)
    maps.encoder_grid[0, -1]      # image 0, last CTFA layer: global grid token over the grid

The maps are read from the same forward pass that produces the model's outputs: the model
is asked, through an explicit `AttentionTrace` argument, to also return the probabilities
its attention layers weigh the values with. Nothing is switched on globally and no hook is
installed, so the normal encode/decode/beam-search path is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hin.errors import UsageError
from hin.model import HIN, AttentionTrace


@dataclass(frozen=True)
class AttentionMaps:
    """Attention maps of a batch, float32 on the CPU, mean over heads.

    encoder_grid [B, L, Ng]: per CTFA layer, the global grid token's attention over the grid.
    encoder_region [B, L, Nr]: per CTFA layer, the global region token's attention over the
        region slots; exactly 0 at padded slots (an image without regions has an all-zero row).
    region_mask [B, Nr]: True where a region slot is padding.
    With tokens [B, T] (decoder inputs, starting with <bos>; position t's maps are those the
    model used to predict token t + 1):
    decoder_grid [B, L, T, Ng] and decoder_region [B, L, T, Nr]: each BGAF layer's direct
        grid / region cross-attention (grid_att, region_att) over its encoder level;
    decoder_gate [B, L, T]: the mean over channels of each layer's fusion gate z (near 1:
        the direct grid/region path dominates; near 0: the crossed path).
    Positions where tokens are padding hold the attention of an empty query: ignore them.
    """

    encoder_grid: Tensor
    encoder_region: Tensor
    region_mask: Tensor
    decoder_grid: Tensor | None = None
    decoder_region: Tensor | None = None
    decoder_gate: Tensor | None = None

    @property
    def num_layers(self) -> int:
        return self.encoder_grid.shape[1]


def _mean_over_heads(per_layer: list[Tensor]) -> Tensor:
    """L tensors [B, h, Q, N] -> [B, L, Q, N]"""
    return torch.stack([probabilities.mean(dim=1) for probabilities in per_layer], dim=1).cpu()


@torch.no_grad()
def attention_maps(model: HIN, grid: Tensor, region: Tensor, tokens: Tensor | None = None) -> AttentionMaps:
    """The encoder's (and with `tokens` [B, T] the decoder's) attention maps for a batch of
    features: grid [B, Ng, Dg], region [B, Nr, Dr] with zero rows as padding, as for
    `HIN.encode`. Runs the model as it is (eval mode for dropout-free maps)."""
    device = model.device
    trace = AttentionTrace()
    enc = model.encode(grid.to(device), region.to(device), trace)
    region_mask = enc.region_mask[:, 0, 0].cpu()
    encoder_region = _mean_over_heads(trace.encoder_region)[:, :, 0]
    maps = dict(encoder_grid=_mean_over_heads(trace.encoder_grid)[:, :, 0],
                encoder_region=encoder_region.masked_fill(region_mask[:, None], 0.0),
                region_mask=region_mask)
    if tokens is not None:
        if tokens.dim() != 2 or tokens.shape[0] != grid.shape[0]:
            raise UsageError(f"tokens must be [batch, steps] with the features' batch size "
                             f"{grid.shape[0]}, got shape {list(tokens.shape)}")
        model.decode(tokens.to(device), enc, trace)
        decoder_region = _mean_over_heads(trace.decoder_region)
        maps.update(decoder_grid=_mean_over_heads(trace.decoder_grid),
                    decoder_region=decoder_region.masked_fill(region_mask[:, None, None], 0.0),
                    decoder_gate=torch.stack([z.mean(dim=-1) for z in trace.decoder_gate], dim=1).cpu())
    return AttentionMaps(**maps)



def select_layer(maps: Tensor, layer: int | None) -> Tensor:
    """[B, L, ...] -> [B, ...]: layer `layer` (1-based) or, with None, the mean over layers."""
    if layer is None:
        return maps.mean(dim=1)
    if not 1 <= layer <= maps.shape[1]:
        raise UsageError(f"--layer must be between 1 and the model's {maps.shape[1]} layers, got {layer}")
    return maps[:, layer - 1]

