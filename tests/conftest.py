"""Fixtures and hooks every folder of tests/ shares; a fixture one folder alone uses lives in
that folder's conftest.py, and plain helper functions in tests/helpers/."""

import pytest
import torch

from helpers.paths import FIXTURES


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

