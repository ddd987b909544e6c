"""SCST loss: exact values of the pure function, and the fast path (search without
gradients, then one teacher-forced pass) equal to the loss of the search's own log-probs."""

import re

import pytest
import torch

from helpers.tiny import tiny_features, tiny_model
from hin.config import ConfigError, DecodingConfig, TrainConfig
from hin.decoding import decode, decode_encoded, teacher_forcing_inputs
from hin.training.scst import (
    SelfCritical,
    baselines,
    scst_decoding,
    scst_loss,
    self_critical_loss,
    sequence_mask,
)

PAD, BOS, EOS = 1, 2, 3


def beam_critic(model, beam_size, max_len):
    """The reference's SCST: all the beams of one beam search."""
    return SelfCritical(model, DecodingConfig(beam_size=beam_size, max_len=max_len,
                                              num_captions=beam_size))


def test_loss_uses_the_mean_of_the_images_beams_as_baseline_and_divides_by_max_len():
    token_logprobs = torch.tensor([[[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]]])   # 1 image, 2 beams
    mask = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]])                   # beam 0 ended
    rewards = torch.tensor([[1.0, 0.0]])                                          # baseline 0.5
    loss = scst_loss(token_logprobs, mask, rewards, max_len=20)
    # beam 0: -(-3/20)(+0.5) = 0.075; beam 1: -(-1.5/20)(-0.5) = -0.0375; mean over beams
    assert loss.item() == pytest.approx((0.075 - 0.0375) / 2)


def test_loss_averages_over_images_and_is_zero_when_beams_tie():
    logprobs = torch.full((2, 3, 4), -1.0)
    mask = torch.ones(2, 3, 4)
    assert scst_loss(logprobs, mask, torch.full((2, 3), 0.7), max_len=4).item() == 0.0
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])   # only image 0 contributes
    per_image_0 = 1.0 * torch.tensor([0.5, -0.5, 0.0]).mean()
    assert scst_loss(logprobs, mask, rewards, max_len=4).item() == pytest.approx(
        per_image_0.item() / 2)


def test_sampled_captions_are_each_measured_against_the_mean_reward_of_the_others():
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]])
    assert torch.equal(baselines(rewards, "sample"),
                       torch.tensor([[1 / 3, 2 / 3, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]]))
    assert torch.equal(baselines(rewards, "beam"), torch.tensor([[0.5], [2.0]]))
    # caption k of image 0: token log-probs -(k + 1), so -(sum / 3) * (r_k - b_k) =
    # (k + 1)(r_k - b_k); image 1 ties and adds nothing; the mean is over all 8 captions
    logprobs = -torch.arange(1.0, 5.0)[None, :, None].expand(2, 4, 3)
    expected = (1 * (1 - 1 / 3) + 2 * (0 - 2 / 3)) / 8
    assert scst_loss(logprobs, torch.ones(2, 4, 3), rewards, max_len=3,
                     captions="sample").item() == pytest.approx(expected)


def test_fast_path_equals_the_loss_of_the_search_log_probs_and_has_gradients():
    model = tiny_model().train()         # dropout 0: train and eval passes agree exactly
    grid, region = tiny_features(batch=3)
    beam_size, max_len = 4, 7
    beams, search_logprobs = decode(model, grid, region, DecodingConfig(
        beam_size=beam_size, max_len=max_len, num_captions=beam_size))
    rewards = torch.arange(3 * beam_size, dtype=torch.float32).view(3, beam_size).sin()
    seen = []

    def reward(candidates):
        seen.append(candidates.clone())
        return rewards

    loss, returned = self_critical_loss(beam_critic(model, beam_size, max_len),
                                        grid, region, reward)
    assert torch.equal(seen[0], beams) and torch.equal(returned, rewards)
    expected = scst_loss(search_logprobs, sequence_mask(beams, PAD), rewards, max_len)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert model.training, "the model is left in the mode it was given in"
    loss.backward()
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)


def beam_rank_reward(beams):
    """Reward k for the k-th best beam of every image."""
    return torch.arange(beams.shape[1], dtype=torch.float32).expand(beams.shape[:2])


def test_beams_of_different_images_never_mix():
    model = tiny_model(seed=3)
    grid, region = tiny_features(batch=2, seed=5)
    critic = beam_critic(model, 3, 6)
    together, _ = self_critical_loss(critic, grid, region, beam_rank_reward)
    alone = [self_critical_loss(critic, grid[i:i + 1], region[i:i + 1], beam_rank_reward)[0]
             for i in range(2)]
    assert together.item() == pytest.approx(torch.stack(alone).mean().item(), abs=1e-6)


def test_the_images_are_encoded_once_and_the_search_reads_that_encoding():
    model = tiny_model(seed=2, dropout=0.3).train()   # encoder dropout: each encoding differs
    grid, region = tiny_features(batch=2)
    encodings = []
    model.encoder.register_forward_hook(lambda module, inputs, output: encodings.append(output))
    seen = []

    def reward(beams):
        seen.append(beams)
        return beam_rank_reward(beams)

    torch.manual_seed(0)
    loss, _ = self_critical_loss(beam_critic(model, 3, 6), grid, region, reward)
    assert len(encodings) == 1 and encodings[0].grid.requires_grad
    searched_again, _ = decode_encoded(model.eval(), encodings[0].detach(),
                                            DecodingConfig(beam_size=3, max_len=6, num_captions=3))
    assert torch.equal(seen[0], searched_again)
    loss.backward()
    assert model.encoder.grid_proj[0].weight.grad.abs().sum() > 0


def test_sampled_captions_get_the_loss_of_their_teacher_forced_log_probs_and_others_baseline():
    model = tiny_model(seed=4).train()        # dropout 0: train and eval passes agree exactly
    grid, region = tiny_features(batch=2)
    critic = SelfCritical(model, scst_decoding(TrainConfig(
        stage="scst", scst_captions="sample", scst_samples=4,
        validation=DecodingConfig(beam_size=3, max_len=7))))
    assert critic.settings == DecodingConfig(max_len=7, sample=True, num_captions=4)
    seen = []

    def reward(captions):
        seen.append(captions.clone())
        return torch.arange(8, dtype=torch.float32).view(2, 4).cos()

    torch.manual_seed(0)
    loss, rewards = self_critical_loss(critic, grid, region, reward)
    captions = seen[0]
    assert captions.shape[:2] == (2, 4) and len({tuple(c) for c in captions[0].tolist()}) > 1
    with torch.no_grad():
        logprobs = model.decode(teacher_forcing_inputs(captions, BOS), model.encode(grid, region))
    token_logprobs = logprobs.gather(-1, captions[..., None]).squeeze(-1)
    expected = scst_loss(token_logprobs, sequence_mask(captions, PAD), rewards, 7, "sample")
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert expected.item() != pytest.approx(
        scst_loss(token_logprobs, sequence_mask(captions, PAD), rewards, 7, "beam").item())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_reference_scst_rewards_every_beam_of_the_validation_search():
    train = TrainConfig(stage="scst", validation=DecodingConfig(beam_size=3, max_len=9))
    assert scst_decoding(train) == DecodingConfig(beam_size=3, max_len=9, num_captions=3)


@pytest.mark.parametrize("values,message", [
    (dict(scst_captions="greedy"), "scst_captions must be one of ('beam', 'sample')"),
    (dict(scst_samples=1), "scst_samples must be at least 2"),
    (dict(scst_samples=0), "scst_samples must be a positive integer"),
])
def test_scst_caption_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**values)
