"""Cross-entropy (docs/model.md §8): next-token NLL with teacher forcing, ignoring <pad>."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def next_token_nll(network: nn.Module, grid: Tensor, region: Tensor, tokens: Tensor,
                   pad_id: int) -> tuple[Tensor, Tensor]:
    """-> (NLL summed over the non-<pad> next tokens, their count), both float32.

    tokens [B, T] (image, caption pairs) or [B, K, T] (K captions per image, encoded once):
    a row of <pad> only, which fills a group shorter than K, adds nothing to either. The
    log-probabilities are float32 whatever precision the forward ran in.
    """
    logprobs = network(grid, region, tokens[..., :-1])
    targets = tokens[..., 1:]
    total = F.nll_loss(logprobs.reshape(-1, logprobs.shape[-1]).float(), targets.reshape(-1),
                       ignore_index=pad_id, reduction="sum")
    return total, (targets != pad_id).sum().float()
