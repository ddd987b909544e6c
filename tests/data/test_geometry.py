"""Feature files say where grid cells and regions lie on the picture, or what they lack."""

import h5py
import numpy as np
import pytest

from helpers.data_files import write_features
from hin.data.errors import DataError
from hin.data.features import FeatureStore


def add_geometry(grid_path, region_path, image_id, rows, cols, size, crop, boxes):
    with h5py.File(grid_path, "a") as grid, h5py.File(region_path, "a") as region:
        grid.attrs.update({"hin_grid_rows": rows, "hin_grid_cols": cols})
        grid[f"{image_id}_size"] = np.array(size, np.int64)
        grid[f"{image_id}_crop"] = np.array(crop, np.float32)
        del region[f"{image_id}_boxes"]
        region[f"{image_id}_boxes"] = np.array(boxes, np.float32)
        region[f"{image_id}_size"] = np.array(size, np.int64)


def test_geometry_places_cells_and_boxes(tmp_path):
    grid_path, region_path = write_features(tmp_path, {5: 2, 6: 1})     # 4 grid tokens
    add_geometry(grid_path, region_path, 5, rows=2, cols=2, size=(40, 60), crop=(10, 0, 50, 40),
                 boxes=[[0, 0, 10, 10], [30, 20, 60, 40]])
    store = FeatureStore(grid_path, region_path, grid_dim=6, region_dim=5)
    geometry = store.geometry(5)
    assert geometry.missing == ()
    assert geometry.size == (40, 60) and geometry.grid_layout == (2, 2)
    np.testing.assert_array_equal(geometry.cell_boxes(), [[10, 0, 30, 20], [30, 0, 50, 20],
                                                          [10, 20, 30, 40], [30, 20, 50, 40]])
    np.testing.assert_array_equal(geometry.boxes, [[0, 0, 10, 10], [30, 20, 60, 40]])


def test_geometry_names_what_the_files_lack(tmp_path):
    grid_path, region_path = write_features(tmp_path, {6: 1})           # no geometry, zero boxes
    store = FeatureStore(grid_path, region_path, grid_dim=6, region_dim=5)
    geometry = store.geometry(6)
    assert geometry.size is None and geometry.grid_layout is None and geometry.boxes is None
    reasons = " | ".join(geometry.missing)
    assert "no picture size ('6_size')" in reasons
    assert "does not record the grid layout (hin_grid_rows/hin_grid_cols" in reasons
    assert "('6_crop')" in reasons and "only all-zero boxes for image 6" in reasons
    with pytest.raises(DataError, match="image 6: the grid cannot be placed"):
        geometry.cell_boxes()


def test_geometry_refuses_a_layout_that_does_not_fit_the_tokens(tmp_path):
    grid_path, region_path = write_features(tmp_path, {5: 1})
    add_geometry(grid_path, region_path, 5, rows=3, cols=3, size=(9, 9), crop=(0, 0, 9, 9),
                 boxes=[[1, 1, 2, 2]])
    geometry = FeatureStore(grid_path, region_path, grid_dim=6, region_dim=5).geometry(5)
    assert geometry.grid_layout is None
    assert any("records a 3x3 grid but image 5 has 4 grid tokens" in m for m in geometry.missing)
