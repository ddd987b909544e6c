"""The fused Adam hin trains with: the numbers of PyTorch's default (foreach) Adam, and an
optimiser state saved by the foreach Adam of earlier hin versions resumes in it."""

from __future__ import annotations

import copy

import torch

from helpers.tiny import tiny_model
from hin.training.optimizer import adam, load_state

BETAS = (0.9, 0.98)


def train(model, optimizer, steps: int, seed: int = 0) -> None:
    """`steps` updates with gradients drawn from `seed` (the same for every optimiser)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for parameter in model.parameters():
            parameter.grad = torch.randn(parameter.shape, generator=generator)
        optimizer.step()


def foreach_adam(model) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=1e-3, betas=BETAS, foreach=True)


def assert_close_weights(left, right) -> None:
    for (name, a), b in zip(left.named_parameters(), right.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_fused_adam_gives_the_updates_of_foreach_adam():
    fused_model, foreach_model = tiny_model(), tiny_model()
    fused = adam(fused_model.parameters(), lr=1e-3, betas=BETAS)
    assert fused.param_groups[0]["fused"] is True
    train(fused_model, fused, steps=5)
    train(foreach_model, foreach_adam(foreach_model), steps=5)
    moved = fused_model.decoder.head.weight - tiny_model().decoder.head.weight
    assert moved.abs().mean() > 1e-3                 # 5 steps of lr 1e-3 moved the weights
    assert_close_weights(fused_model, foreach_model)


def test_a_foreach_adam_state_resumes_fused_with_its_moments_and_step():
    old_model = tiny_model()
    old = foreach_adam(old_model)
    train(old_model, old, steps=3)
    saved = copy.deepcopy(old.state_dict())          # as torch.save / torch.load give it

    resumed_model = copy.deepcopy(old_model)
    resumed = adam(resumed_model.parameters(), lr=1e-3, betas=BETAS)
    load_state(resumed, saved)
    assert resumed.param_groups[0]["fused"] is True and not resumed.param_groups[0]["foreach"]
    for index, state in old.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed.state_dict()["state"][index][key], value), key

    train(old_model, old, steps=2, seed=1)           # both continue from step 3
    train(resumed_model, resumed, steps=2, seed=1)
    assert resumed.state_dict()["state"][0]["step"] == 5
    assert_close_weights(resumed_model, old_model)
