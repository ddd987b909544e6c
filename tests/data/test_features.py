"""HDF5 feature store: padding, dtype, lazy per-process handles, and every error it raises."""

import pickle

import h5py
import numpy as np
import pytest

from helpers.data_files import GRID_DIM, GRID_TOKENS, REGION_DIM, write_features
from hin.data.errors import DataError
from hin.data.features import FeatureStore, nonfinite_count


def store_for(paths, **options) -> FeatureStore:
    return FeatureStore(*paths, grid_dim=GRID_DIM, region_dim=REGION_DIM, **options)


def test_regions_are_padded_with_zero_rows_and_truncated(tmp_path):
    paths = write_features(tmp_path, {1: 2, 2: 5, 3: 0})
    store = store_for(paths, max_regions=3)
    with h5py.File(paths[1]) as raw:
        stored = raw["1_features"][()]
    grid, region = store[1]
    assert grid.shape == (GRID_TOKENS, GRID_DIM) and grid.dtype == np.float16
    assert region.shape == (3, REGION_DIM) and region.dtype == np.float16
    np.testing.assert_array_equal(region[:2], stored)
    assert not region[2].any()
    assert np.abs(store[2][1]).sum(axis=1).all()
    assert not store[3][1].any()


def test_float32_files_stay_float32(tmp_path):
    store = store_for(write_features(tmp_path, {1: 1}, dtype="float32"))
    assert store[1][0].dtype == np.float32


def test_missing_id_names_the_id_the_file_and_the_fix(tmp_path):
    store = store_for(write_features(tmp_path, {1: 1}))
    with pytest.raises(DataError, match=r"image 7 has no '7_features' entry in .*grid\.hdf5; "
                                        r"run `hin data check`"):
        store[7]


def test_require_counts_the_missing_images_of_a_split(tmp_path):
    store = store_for(write_features(tmp_path, {1: 1, 2: 1}))
    with pytest.raises(DataError, match=r"grid\.hdf5: 3 of the 5 images of split 'val' have no "
                                        r"features \(first ids: 3, 4, 5\)"):
        store.require([1, 2, 3, 4, 5], "val")
    store.require([1, 2], "val")


def test_wrong_dimensions_and_non_finite_values_are_errors(tmp_path):
    paths = write_features(tmp_path, {1: 1, 2: 2})
    with h5py.File(paths[1], "a") as region:
        del region["1_features"]
        region["1_features"] = np.ones((2, REGION_DIM + 1), np.float16)
        data = region["2_features"][()]
        data[1, 3] = np.nan
        del region["2_features"]
        region["2_features"] = data
    store = store_for(paths)
    with pytest.raises(DataError, match=r"region\.hdf5: image 1: features have shape \[2, 6\], "
                                        r"expected \[n, 5\]"):
        store[1]
    with pytest.raises(DataError, match=r"region\.hdf5: image 2: features hold 1 NaN/inf values"):
        store[2]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nonfinite_count_finds_nan_and_inf_exactly_as_isfinite_does(dtype):
    """The bit test behind every feature read: NaN, ±inf counted; the largest finite values,
    subnormals, -0 and a non-contiguous view not."""
    info = np.finfo(dtype)
    values = np.array([0.0, -0.0, 1.5, info.max, -info.max, info.tiny / 4, np.nan, np.inf,
                       -np.inf, -np.nan], dtype=dtype)
    grid = np.tile(values, (7, 3))
    for array in (values, grid, grid[:, ::2], grid.T):
        assert nonfinite_count(array) == array.size - np.count_nonzero(np.isfinite(array))
    assert nonfinite_count(values[:6]) == 0


def test_check_lists_every_problem(tmp_path):
    paths = write_features(tmp_path, {1: 1, 2: 1, 3: 1})
    with h5py.File(paths[0], "a") as grid:
        del grid["2_features"]
        data = grid["3_features"][()]
        data[0, 0] = np.inf
        del grid["3_features"]
        grid["3_features"] = data
    problems = store_for(paths).check([1, 2, 3, 4], progress=False)
    assert not problems.ok
    assert problems.missing == {str(paths[0]): [2, 4], str(paths[1]): [4]}
    assert problems.malformed[str(paths[0])] == [(3, "features hold 1 NaN/inf values")]
    assert "2 image ids missing (first: 2, 4)" in problems.summary()
    shapes_only = store_for(paths).check([1, 3], read_values=False, progress=False)
    assert shapes_only.ok and "all entries present" in shapes_only.summary()


def test_store_pickles_without_its_handle_and_reopens_per_process(tmp_path):
    store = store_for(write_features(tmp_path, {1: 1}))
    first = store[1][0]
    copy = pickle.loads(pickle.dumps(store))
    assert copy.grid._handle is None
    np.testing.assert_array_equal(copy[1][0], first)
    handle = store.grid.handle
    store.grid._pid = -1  # as seen from a forked worker: the handle belongs to another process
    assert store.grid.handle is not handle
    np.testing.assert_array_equal(store[1][0], first)


def test_cache_serves_repeated_reads_from_memory(tmp_path):
    store = store_for(write_features(tmp_path, {1: 2}), cache=True)
    first = store[1]
    store.close()
    store.grid.path = tmp_path / "gone.hdf5"
    assert store[1] is first


def test_missing_file_names_the_fix(tmp_path):
    store = store_for((tmp_path / "grid.hdf5", tmp_path / "region.hdf5"))
    with pytest.raises(FileNotFoundError, match=r"grid\.hdf5 does not exist; extract features"):
        store[1]
