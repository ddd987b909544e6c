"""Fixtures of the explain tests."""

import pytest

from helpers.corner_world import make_corner_data


@pytest.fixture(scope="module")
def corner_data(tmp_path_factory):
    """(root, grid file, region file, pictures folder) of the corner world, annotated."""
    return make_corner_data(tmp_path_factory.mktemp("corner"))
