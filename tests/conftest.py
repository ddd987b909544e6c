"""Shared test fixtures: paths to the copied data, and tiny models."""

from pathlib import Path

import pytest
import torch

from hin.config import HINConfig
from hin.model import HIN

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, saying why, where PyTorch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def golden() -> dict:
    """The reference implementation's weights, inputs and outputs for a small model (its
    state dict, encoder outputs, log-probabilities and beam-search results)."""
    return torch.load(FIXTURES / "hin_reference_small.pt", weights_only=True)


def tiny_config(**overrides) -> HINConfig:
    values = dict(vocab_size=20, num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0,
                  grid_dim=12, region_dim=10)
    values.update(overrides)
    return HINConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> HIN:
    torch.manual_seed(seed)
    return HIN(tiny_config(**overrides)).eval()


def tiny_features(batch: int = 2, grid_tokens: int = 9, regions: int = 6, seed: int = 1,
                  config: HINConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    config = config or tiny_config()
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randn(batch, grid_tokens, config.grid_dim, generator=generator)
    region = torch.randn(batch, regions, config.region_dim, generator=generator)
    return grid, region
