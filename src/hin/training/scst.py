"""Self-critical sequence training (docs/model.md §8): rewards, baseline and loss.

The beams are found without gradients (cached beam search); their log-probabilities are
then recomputed in one teacher-forced pass with gradients. This gives the same loss as
running the whole search under autograd, at a fraction of its time and memory.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from hin.decoding import beam_search
from hin.model import HIN


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


def self_critical_loss(model: HIN, grid: Tensor, region: Tensor,
                       reward: Callable[[Tensor], Tensor], *, beam_size: int, max_len: int,
                       network: nn.Module | None = None,
                       autocast: Callable[[], AbstractContextManager] = nullcontext
                       ) -> tuple[Tensor, Tensor]:
    """One SCST loss over a batch of images -> (loss, rewards [B, K]).

    The K = beam_size beams are found by cached beam search without gradients (dropout
    off), `reward(beams [B, K, T]) -> [B, K]` scores them, and one teacher-forced pass of
    `network` (the model, or its DistributedDataParallel wrapper) with gradients gives the
    beams' log-probabilities: every image's encoder output is shared by its K beams.
    """
    network = network or model
    was_training = model.training
    model.eval()
    with autocast():
        beams, _ = beam_search(model, grid, region, beam_size=beam_size, max_len=max_len,
                               out_size=beam_size)
    beams = beams.clone()   # an ordinary tensor: inference tensors cannot enter autograd
    model.train(was_training)
    rewards = reward(beams).to(device=beams.device, dtype=torch.float32)
    with autocast():
        logprobs = network(grid, region, teacher_forcing_inputs(beams, model.config.bos_id))
    token_logprobs = logprobs.float().gather(-1, beams[..., None]).squeeze(-1)
    loss = scst_loss(token_logprobs, sequence_mask(beams, model.config.pad_id), rewards, max_len)
    return loss, rewards
