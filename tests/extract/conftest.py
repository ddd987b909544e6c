"""Fixtures of the extraction tests."""

import pytest

from helpers.extract_models import write_pictures, write_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP vision model saved as a Hugging Face folder."""
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def pictures(request, tmp_path):
    """A folder of the pictures the test file names in its `PICTURES` ({file name: (height,
    width)}): each file extracts its own set."""
    return write_pictures(tmp_path / "pictures", request.module.PICTURES)
