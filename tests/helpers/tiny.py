"""A tiny HIN and random features for it: fast enough to build in every test that needs one."""

import torch

from hin.config import HINConfig
from hin.model import HIN


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
