"""Precomputed image features in the released HDF5 layout: lookup, padding and validation.

Grid file: `<image_id>_features` [Ng, Dg] (optionally `<image_id>_global`). Region file:
`<image_id>_features` [n, Dr] with `<image_id>_boxes`, `<image_id>_size`, `<image_id>_cls_prob`.
Regions are padded with zero rows or truncated to `max_regions`; the model recognises
padding as all-zero rows (docs/model.md §2), so padding is exactly zero. Zero regions is valid.

Where each image's grid cells and regions lie on its picture is `FeatureStore.geometry`,
read from the same files and described by `hin.data.geometry`.

Each process opens its own read-only handle lazily (safe under fork, spawn and forkserver
DataLoader workers); arrays are read one entry at a time in their on-disk dtype (fp16 stays
fp16 until the batch is built). This module must never substitute anything for a missing or
malformed entry: it raises, naming the image id, the file and the fix.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from hin.data.errors import DataError, first_ids
from hin.data.geometry import (
    ATTRIBUTE_PREFIX,
    GEOMETRY_SUFFIXES,
    GRID_COLS,
    GRID_ROWS,
    ImageGeometry,
    describe_geometry,
)
from hin.files import require_file

FEATURES_SUFFIX = "_features"
CHECK_FIX = "run `hin data check` to list every problem entry, then re-extract those images"
MAKE_FIX = "extract features with `hin extract` or generate the synthetic set with `hin data synth`"


def pad_regions(rows: np.ndarray, max_regions: int, region_dim: int) -> np.ndarray:
    """[n, Dr] region rows -> [max_regions, Dr]: the first `max_regions` rows, then zero rows
    (padding the model recognises by their zero sum). The one rule for training and captioning."""
    rows = np.asarray(rows).reshape(-1, region_dim)
    padded = np.zeros((max_regions, region_dim), dtype=rows.dtype)
    kept = min(len(rows), max_regions)
    padded[:kept] = rows[:kept]
    return padded


def feature_key(image_id: int) -> str:
    return f"{image_id}{FEATURES_SUFFIX}"


def _canonical_id(name: str) -> int | None:
    """The image id of entry `name` when it is `<id>_features` with the id written as hin reads
    it (ASCII digits, no leading zeros); None otherwise."""
    prefix = name[:-len(FEATURES_SUFFIX)]
    if not name.endswith(FEATURES_SUFFIX) or re.fullmatch(r"0|[1-9][0-9]*", prefix) is None:
        return None
    return int(prefix)


def feature_ids(handle: h5py.File) -> set[int]:
    """Ids with a `<id>_features` entry (reads names only, no data). Other names ending in
    `_features` are not read (`key_problems` lists them, and `hin data check` reports them)."""
    return {image_id for name in handle if (image_id := _canonical_id(name)) is not None}


def key_problems(handle: h5py.File) -> list[str]:
    """Entries named like features that hin never reads: `abc_features`, or an id written with
    leading zeros (`0100051_features`, which may hide a different copy of image 100051)."""
    problems = []
    for name in handle:
        if not name.endswith(FEATURES_SUFFIX) or _canonical_id(name) is not None:
            continue
        prefix = name[:-len(FEATURES_SUFFIX)]
        if re.fullmatch(r"[0-9]+", prefix) is None:
            problems.append(f"entry '{name}' does not name an image id (entries are "
                            f"'<integer id>{FEATURES_SUFFIX}'): rename or delete it")
        else:
            twin = feature_key(int(prefix))
            also = f"'{twin}' also exists" if twin in handle else f"there is no '{twin}'"
            problems.append(f"entry '{name}' writes image id {int(prefix)} with leading zeros, "
                            f"so it is never read ({also}): keep one entry named '{twin}'")
    return problems


def stack_grids(grids: Sequence[np.ndarray], names: Sequence[object]) -> np.ndarray:
    """Per-image grid arrays -> one [B, Ng, Dg] array; images with another number of grid
    tokens than the first are refused by name (features from different extractions)."""
    shapes = {name: np.shape(grid) for name, grid in zip(names, grids)}
    first_name, first = next(iter(shapes.items()))
    odd = [f"{name} has {shape[0]}" for name, shape in shapes.items() if shape != first]
    if odd:
        raise DataError(f"images in one batch need the same number of grid tokens: image "
                        f"{first_name} has {first[0]}, {'; '.join(odd[:3])}; {CHECK_FIX}")
    return np.stack(grids)


def open_hdf5(path: str | Path, fix: str = MAKE_FIX) -> h5py.File:
    """Open a feature file read-only; a missing, folder or damaged path is a one-line error
    naming it (h5py's own message does not say which file)."""
    path = require_file(path, "feature file", fix)
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if isinstance(error, BlockingIOError) or "unable to lock file" in str(error):
            raise DataError(f"feature file {path} is in use: another process holds it open for "
                            "writing (HDF5's file lock); wait until that process (a running "
                            "`hin extract`, say) has finished, then try again") from error
        raise DataError(f"feature file {path} is not a readable HDF5 file ({error}); it may be "
                        f"truncated or corrupted: {fix}") from error


def read_attributes(path: str | Path) -> dict[str, Any]:
    """What made a feature file (its `hin_*` attributes, without the prefix): extractor, model,
    feature_dim, ... Empty for files not written by `hin extract` (released or synthetic
    features). Training stores this in checkpoints so that `hin caption` can redo it."""
    with open_hdf5(path) as handle:
        return file_attributes(handle)


def file_attributes(handle: h5py.File) -> dict[str, Any]:
    return {key.removeprefix(ATTRIBUTE_PREFIX): _plain(value)
            for key, value in handle.attrs.items() if key.startswith(ATTRIBUTE_PREFIX)}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class HDF5File:
    """A read-only HDF5 file opened on first use in each process; picklable (the handle is not)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid: int | None = None

    @property
    def handle(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open_hdf5(self.path)
            self._pid = os.getpid()
        return self._handle

    def image_ids(self) -> set[int]:
        return feature_ids(self.handle)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_handle": None, "_pid": None}

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None


@dataclass
class FeatureProblems:
    """What `FeatureStore.check` found, entry by entry; empty lists mean a usable split."""

    checked: int = 0
    missing: dict[str, list[int]] = field(default_factory=dict)
    malformed: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)     # entries hin never reads

    @property
    def ok(self) -> bool:
        return not any(self.missing.values()) and not any(self.malformed.values()) \
            and not any(self.keys.values())

    def summary(self) -> str:
        lines = [f"checked {self.checked} images"]
        for path, ids in self.missing.items():
            if ids:
                lines.append(f"{path}: {len(ids)} image ids missing (first: {first_ids(ids)})")
        for path, problems in self.malformed.items():
            for image_id, reason in problems[:10]:
                lines.append(f"{path}: image {image_id}: {reason}")
            if len(problems) > 10:
                lines.append(f"{path}: ... {len(problems) - 10} more malformed entries")
        for path, names in self.keys.items():
            lines += [f"{path}: {problem}" for problem in names[:10]]
            if len(names) > 10:
                lines.append(f"{path}: ... {len(names) - 10} more misnamed entries")
        if self.ok:
            lines.append("all entries present and well-formed")
        return "\n".join(lines)


class FeatureStore:
    """Grid and region features of each image, read from the two HDF5 files on demand."""

    def __init__(self, grid_path: str | Path, region_path: str | Path, *, max_regions: int = 50,
                 grid_dim: int = 1024, region_dim: int = 2048, cache: bool = False) -> None:
        if max_regions <= 0:
            raise DataError(f"max_regions must be positive, got {max_regions}")
        self.grid = HDF5File(grid_path)
        self.region = HDF5File(region_path)
        self.max_regions = max_regions
        self.grid_dim = grid_dim
        self.region_dim = region_dim
        # Per process: each DataLoader worker fills its own copy, so keep it for small sets.
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __getitem__(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(grid [Ng, Dg], region [max_regions, Dr]) in their on-disk dtype; padding rows are 0."""
        if self._cache is not None and image_id in self._cache:
            return self._cache[image_id]
        grid = self._read(self.grid, image_id, self.grid_dim)
        region = self._read(self.region, image_id, self.region_dim)
        entry = (grid, pad_regions(region, self.max_regions, self.region_dim))
        if self._cache is not None:
            self._cache[image_id] = entry
        return entry

    def _read(self, file: HDF5File, image_id: int, dim: int) -> np.ndarray:
        dataset = file.handle.get(feature_key(image_id))
        if dataset is None:
            raise DataError(
                f"image {image_id} has no '{feature_key(image_id)}' entry in {file.path}; "
                f"{CHECK_FIX}")
        problem = _shape_problem(dataset, dim)
        if problem is None:
            array = dataset[()]
            problem = _value_problem(array)
        if problem is not None:
            raise DataError(f"{file.path}: image {image_id}: {problem}; {CHECK_FIX}")
        return array

    def widths(self, image_id: int) -> tuple[int, int]:
        """(grid, region) feature width of image `image_id` as stored (names and shapes only),
        so a width that is not the model's is found before any training starts."""
        def width(file: HDF5File) -> int:
            dataset = file.handle.get(feature_key(image_id))
            if dataset is None:
                raise DataError(f"image {image_id} has no '{feature_key(image_id)}' entry in "
                                f"{file.path}; {CHECK_FIX}")
            return int(dataset.shape[-1]) if dataset.shape else 0
        return width(self.grid), width(self.region)

    def geometry(self, image_id: int) -> ImageGeometry:
        """What the files record about where image `image_id`'s grid cells and regions lie."""
        def entries(file: HDF5File) -> dict[str, np.ndarray]:
            names = {suffix: f"{image_id}_{suffix}" for suffix in GEOMETRY_SUFFIXES}
            return {suffix: file.handle[name][()] for suffix, name in names.items() if name in file.handle}

        def rows(file: HDF5File) -> int | None:
            entry = file.handle.get(feature_key(image_id))
            return entry.shape[0] if isinstance(entry, h5py.Dataset) else None

        grid = self.grid.handle
        layout = {key: _plain(grid.attrs[ATTRIBUTE_PREFIX + key]) for key in (GRID_ROWS, GRID_COLS)
                  if ATTRIBUTE_PREFIX + key in grid.attrs}
        return describe_geometry(image_id, layout, entries(self.grid), entries(self.region),
                                 rows(self.grid), str(self.grid.path), str(self.region.path),
                                 region_rows=rows(self.region))

    def missing(self, image_ids: Iterable[int]) -> dict[str, list[int]]:
        """Per file, the given ids without a features entry (names only; fast)."""
        result = {}
        for file in (self.grid, self.region):
            present = file.image_ids()
            result[str(file.path)] = [image_id for image_id in image_ids if image_id not in present]
        return result

    def require(self, image_ids: Sequence[int], split: str) -> None:
        """Fail before any work starts if a split's images lack features, saying how many."""
        for path, absent in self.missing(image_ids).items():
            if absent:
                raise DataError(
                    f"{path}: {len(absent)} of the {len(image_ids)} images of split {split!r} "
                    f"have no features (first ids: {first_ids(absent)}); {CHECK_FIX}")

    def check(self, image_ids: Sequence[int], read_values: bool = True,
              progress: bool = True) -> FeatureProblems:
        """Find every missing or malformed entry of `image_ids` (shapes, dims, NaN/inf)."""
        problems = FeatureProblems(checked=len(image_ids), missing=self.missing(image_ids))
        for file, dim in ((self.grid, self.grid_dim), (self.region, self.region_dim)):
            absent = set(problems.missing[str(file.path)])
            found = []
            for image_id in tqdm(image_ids, desc=f"checking {file.path.name}", unit="image",
                                 disable=not progress):
                if image_id in absent:
                    continue
                dataset = file.handle[feature_key(image_id)]
                problem = _shape_problem(dataset, dim)
                if problem is None and read_values:
                    problem = _value_problem(dataset[()])
                if problem is not None:
                    found.append((image_id, problem))
            problems.malformed[str(file.path)] = found
            problems.keys[str(file.path)] = key_problems(file.handle)
        problems.malformed[str(self.grid.path)] += self._odd_grids(image_ids, problems)
        return problems

    def _odd_grids(self, image_ids: Sequence[int], problems: FeatureProblems) -> list[tuple[int, str]]:
        """Images whose number of grid tokens differs from the file's layout (its recorded
        rows x cols, else the count most images have): they cannot share a batch."""
        skip = set(problems.missing[str(self.grid.path)]) | {
            image_id for image_id, _ in problems.malformed[str(self.grid.path)]}
        handle = self.grid.handle
        counts = {image_id: handle[feature_key(image_id)].shape[0]
                  for image_id in image_ids if image_id not in skip}
        if not counts:
            return []
        rows, cols = (handle.attrs.get(ATTRIBUTE_PREFIX + key) for key in (GRID_ROWS, GRID_COLS))
        if rows is not None and cols is not None:
            expected, why = int(rows) * int(cols), f"the file records a {rows}x{cols} grid"
        else:
            expected = collections.Counter(counts.values()).most_common(1)[0][0]
            why = "most images have that many"
        return [(image_id, f"has {count} grid tokens, expected {expected} ({why})")
                for image_id, count in counts.items() if count != expected]

    def close(self) -> None:
        self.grid.close()
        self.region.close()


def _shape_problem(entry: object, dim: int) -> str | None:
    if not isinstance(entry, h5py.Dataset):
        return f"the features entry is an HDF5 {type(entry).__name__.lower()}, not an array"
    if len(entry.shape) != 2 or entry.shape[1] != dim:
        return f"features have shape {list(entry.shape)}, expected [n, {dim}]"
    return None


# IEEE 754: a value is NaN or infinite exactly when all its exponent bits are set, and its
# magnitude is at least 2**14 exactly when its exponent field is at least that of 2**14.
_EXPONENT_BITS = {np.dtype(np.float16): (np.uint16, 0x7C00, (15 + 14) << 10),
                  np.dtype(np.float32): (np.uint32, 0x7F80_0000, (127 + 14) << 23),
                  np.dtype(np.float64): (np.uint64, 0x7FF0_0000_0000_0000, (1023 + 14) << 52)}
# Features are activations of a normalised network (CLIP's grid and VinVL's regions stay below
# a few hundred). The model squares them (LayerNorm's variance over up to 2048 values,
# attention logits): at 2**14 = 16384 those squares reach 2.7e8 per value and 5.5e11 per row,
# where bfloat16 keeps 3 significant digits and float16 overflows. Above it a file holds a
# scaling bug, not features, and decoding would give NaN scores.
MAX_FEATURE_MAGNITUDE = 2.0**14


def nonfinite_count(array: np.ndarray) -> int:
    """How many NaN/inf values `array` holds. Every feature read pays this check, so it tests
    the exponent bits (several times faster than np.isfinite on fp16, which starved the loader)."""
    return _exponent_counts(array)[0]


def _exponent_counts(array: np.ndarray) -> tuple[int, int]:
    """(NaN/inf values, finite values of magnitude >= MAX_FEATURE_MAGNITUDE) in `array`."""
    layout = _EXPONENT_BITS.get(array.dtype)
    if layout is None:
        finite = np.isfinite(array)
        huge = np.count_nonzero(finite & (np.abs(array) >= MAX_FEATURE_MAGNITUDE))
        return int(array.size - np.count_nonzero(finite)), int(huge)
    unsigned, mask, limit = layout
    bits = np.ascontiguousarray(array).view(unsigned) & unsigned(mask)
    at_or_above = int(np.count_nonzero(bits >= unsigned(limit)))   # NaN/inf are among them
    if at_or_above == 0:            # the usual case: one pass over the entry
        return 0, 0
    nonfinite = int(np.count_nonzero(bits == unsigned(mask)))
    return nonfinite, at_or_above - nonfinite


def _value_problem(array: np.ndarray) -> str | None:
    if not np.issubdtype(array.dtype, np.floating):
        return f"features have dtype {array.dtype}, expected float16 or float32"
    bad, huge = _exponent_counts(array)
    if bad:
        return f"features hold {bad} NaN/inf values"
    if huge:
        return (f"features hold {huge} values of magnitude {MAX_FEATURE_MAGNITUDE:.0f} or more "
                f"(largest {float(np.abs(array).max()):.3g}), beyond what the model's arithmetic "
                "holds (extracted features stay below a few hundred)")
    return None
