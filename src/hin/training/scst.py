"""Self-critical sequence training (docs/model.md §8): rewards, baseline and loss.

The images are encoded once, with gradients; the beams are found on that encoding without
gradients (cached beam search), and their log-probabilities are then recomputed from the
same encoding in one teacher-forced pass with gradients. This gives the same loss as
running the whole search under autograd, at a fraction of its time and memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hin.config import DecodingConfig
from hin.decoding import beam_search_encoded, teacher_forcing_inputs
from hin.devices import autocast
from hin.model import HIN, EncoderOutput


def sequence_mask(beams: Tensor, pad_id: int) -> Tensor:
    """1.0 for every token up to and including <eos>; beam search pads after <eos>."""
    return (beams != pad_id).float()


def baselines(rewards: Tensor, captions: str = "beam") -> Tensor:
    """rewards [B, K] -> each caption's baseline [B, K]: the mean reward of the image's K
    captions (`beam`, the reference's), or of its other K - 1 (`sample`: new self-critical)."""
    if captions == "beam":
        return rewards.mean(dim=1, keepdim=True)
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (rewards.shape[1] - 1)


def scst_loss(token_logprobs: Tensor, mask: Tensor, rewards: Tensor, max_len: int,
              captions: str = "beam") -> Tensor:
    """−(sum of a caption's token log-probs up to <eos>) / max_len × (reward − baseline),
    averaged over captions and images; the baseline is `baselines(rewards, captions)`.

    token_logprobs, mask: [B, K, T]; rewards: [B, K]. Dividing by the fixed `max_len` is the
    reference's mean over its fixed number of decoding steps.
    """
    advantage = rewards - baselines(rewards, captions)
    sequence_logprob = (token_logprobs * mask).sum(dim=-1) / max_len
    return -(sequence_logprob * advantage).mean()


def self_critical_loss(model: HIN, grid: Tensor, region: Tensor,
                       reward: Callable[[Tensor], Tensor], *, beam_size: int, max_len: int,
                       network: nn.Module | None = None, precision: str = "fp32"
                       ) -> tuple[Tensor, Tensor]:
    """One SCST loss over a batch of images -> (loss, rewards [B, K]).

    One forward of `network` (the model, or its DistributedDataParallel wrapper) under
    `precision` encodes the images with gradients, in the model's mode (training: encoder
    dropout on). The K = beam_size beams are searched on a detached copy of that encoding
    without gradients and with the decoder's dropout off; `reward(beams [B, K, T]) -> [B, K]`
    scores them; the same encoding (with gradients, dropout masks unchanged) then gives the
    beams' log-probabilities in one teacher-forced pass, every image's encoding shared by its
    K beams. As in the reference, search and gradient pass read one encoder output (one
    dropout mask); unlike it, the decoder searches without dropout and the gradient pass
    draws its own decoder dropout masks.
    """
    network = network or model
    settings = DecodingConfig(beam_size=beam_size, max_len=max_len, num_captions=beam_size)
    found: list[Tensor] = []

    def search(enc: EncoderOutput) -> Tensor:
        was_training = model.training
        model.eval()
        beams, _ = beam_search_encoded(model, enc.detach(), settings)
        model.train(was_training)
        found.append(beams.clone())   # an ordinary tensor: inference tensors cannot enter autograd
        return teacher_forcing_inputs(found[0], model.config.bos_id)

    with autocast(model.device, precision):
        logprobs = network(grid, region, search)
    beams = found[0]
    rewards = reward(beams).to(device=beams.device, dtype=torch.float32)
    token_logprobs = logprobs.float().gather(-1, beams[..., None]).squeeze(-1)
    loss = scst_loss(token_logprobs, sequence_mask(beams, model.config.pad_id), rewards, max_len)
    return loss, rewards
