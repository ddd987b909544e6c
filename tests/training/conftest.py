"""Fixtures of the training tests."""

from pathlib import Path

import pytest

from helpers.training_runs import TRAIN_IMAGES
from hin.synth import generate


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A synthetic data set large enough for a tiny training run (each test file its own)."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=0, train=TRAIN_IMAGES, val=10, test=10, min_freq=1, progress=False)
    return out
