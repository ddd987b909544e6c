"""Self-critical sequence training (spec §8): rewards, baseline and loss.

The beams are found without gradients (cached beam search); their log-probabilities are
then recomputed in one teacher-forced pass with gradients. This gives the same loss as
running the whole search under autograd, at a fraction of its time and memory.
"""

from __future__ import annotations

import torch
from torch import Tensor


def teacher_forcing_inputs(beams: Tensor, bos_id: int) -> Tensor:
    """Beams [B, K, T] -> decoder inputs [B, K, T]: <bos> then each beam without its last id."""
    bos = beams.new_full((*beams.shape[:-1], 1), bos_id)
    return torch.cat((bos, beams[..., :-1]), dim=-1)


def sequence_mask(beams: Tensor, pad_id: int) -> Tensor:
    """1.0 for every token up to and including <eos>; beam search pads after <eos>."""
    return (beams != pad_id).float()


def scst_loss(token_logprobs: Tensor, mask: Tensor, rewards: Tensor, max_len: int) -> Tensor:
    """−(sum of a beam's token log-probs up to <eos>) / max_len × (reward − baseline),
    averaged over beams and images; the baseline is the mean reward of the image's beams.

    token_logprobs, mask: [B, K, T]; rewards: [B, K]. Dividing by the fixed `max_len` is the
    reference's mean over its fixed number of decoding steps.
    """
    advantage = rewards - rewards.mean(dim=1, keepdim=True)
    sequence_logprob = (token_logprobs * mask).sum(dim=-1) / max_len
    return -(sequence_logprob * advantage).mean()
