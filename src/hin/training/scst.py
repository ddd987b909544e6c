"""Self-critical sequence training (docs/model.md §8): rewards, baseline and loss; the
reference's beams with their mean reward as baseline, or sampled captions each against the
mean reward of the others ("new self-critical", `train.scst_captions=sample`).

The images are encoded once, with gradients; the captions are found on that encoding without
gradients (cached beam search or sampling), and their log-probabilities are then recomputed from the
same encoding in one teacher-forced pass with gradients. This gives the same loss as
running the whole search under autograd, at a fraction of its time and memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hin.config import DecodingConfig, TrainConfig
from hin.decoding import decode_encoded, teacher_forcing_inputs
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


class SelfCritical(nn.Module):
    """SCST's forward pass as one module (what DistributedDataParallel wraps for an SCST run,
    so the gradient all-reduce follows the one autograd pass it makes).

    forward(grid, region) -> (captions [B, K, T], their token log-probabilities [B, K, T]):
    the images are encoded with gradients, in the model's mode (training: encoder dropout
    on); the K captions are found on a detached copy of that encoding without gradients and
    with the decoder's dropout off, as `settings` say (`scst_decoding`: the K beams of beam
    search, or K samples); the same encoding (with gradients, dropout masks unchanged) then
    gives their log-probabilities in one teacher-forced pass, every image's encoding shared
    by its K captions. As in the reference, search and gradient pass read one encoder output
    (one dropout mask); unlike it, the decoder searches without dropout and the gradient pass
    draws its own decoder dropout masks.
    """

    def __init__(self, model: HIN, settings: DecodingConfig) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.captions = "sample" if settings.sample else "beam"

    def search(self, enc: EncoderOutput) -> Tensor:
        """The captions [B, K, T] on `enc`, without gradients or decoder dropout."""
        was_training = self.model.training
        self.model.eval()
        found, _ = decode_encoded(self.model, enc.detach(), self.settings)
        self.model.train(was_training)
        return found.clone()   # an ordinary tensor: inference tensors cannot enter autograd

    def forward(self, grid: Tensor, region: Tensor) -> tuple[Tensor, Tensor]:
        enc = self.model.encode(grid, region)
        found = self.search(enc)
        logprobs = self.model.decode(teacher_forcing_inputs(found, self.model.config.bos_id), enc)
        return found, logprobs.float().gather(-1, found[..., None]).squeeze(-1)


def scst_decoding(train: TrainConfig) -> DecodingConfig:
    """The captions SCST rewards (`train.scst_captions`): all the validation beam's beams
    (`beam`, the reference's), or `train.scst_samples` samples of the validation length."""
    length = train.validation.max_len
    if train.scst_captions == "sample":
        return DecodingConfig(max_len=length, sample=True, num_captions=train.scst_samples)
    beam = train.validation.beam_size
    return DecodingConfig(beam_size=beam, max_len=length, num_captions=beam)


def self_critical_loss(critic: SelfCritical, grid: Tensor, region: Tensor,
                       reward: Callable[[Tensor], Tensor], *, network: nn.Module | None = None,
                       precision: str = "fp32") -> tuple[Tensor, Tensor]:
    """One SCST loss over a batch of images -> (loss, rewards [B, K]): one forward of
    `network` (`critic`, or its DistributedDataParallel wrapper) under `precision`;
    `reward(beams [B, K, T]) -> [B, K]` scores its beams."""
    model = critic.model
    with autocast(model.device, precision):
        beams, token_logprobs = (network or critic)(grid, region)
    rewards = reward(beams).to(device=beams.device, dtype=torch.float32)
    loss = scst_loss(token_logprobs, sequence_mask(beams, model.config.pad_id), rewards,
                     critic.settings.max_len, critic.captions)
    return loss, rewards
