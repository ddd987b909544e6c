"""Feature files in the released HDF5 layout, written so that a killed run never corrupts one.

HDF5 keeps no journal: a process killed while it adds datasets to a file can leave the whole
file unreadable. So extraction never writes into the output file while it runs:

1. each chunk of images goes to its own small part file, written under a temporary name and
   renamed into `<out>.parts/` when complete (a rename is atomic), so a part is whole or absent;
2. when every image is done, the existing output (if any) and the parts are copied into a new
   file beside the output, which is renamed over it; the parts are deleted after that rename.

A kill at any moment leaves the previous output intact and every finished part on disk; the
next run skips the ids found in either and completes the merge. The price is one sequential
copy of the output per finished run. Every file records who wrote it (`hin_*` attributes), and
a run refuses to mix features from another extractor or model into an existing output.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from hin.data.features import ATTRIBUTE_PREFIX, feature_ids, file_attributes, open_hdf5
from hin.errors import HINError

PART_GLOB = "part-*.h5"

Entries = Mapping[int, Mapping[str, np.ndarray]]


class FeatureFileError(HINError, ValueError):
    """An output file or part that cannot be extended safely; the message says which and why."""


def _record(handle: h5py.File, attributes: Mapping[str, object]) -> None:
    handle.attrs.update({ATTRIBUTE_PREFIX + key: value for key, value in attributes.items()})


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FeatureWriter:
    """Adds images to feature file `out` chunk by chunk; see the module docstring for why."""

    def __init__(self, out: str | Path, attributes: Mapping[str, object]) -> None:
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.attributes = dict(attributes)
        self._done: set[int] = set()
        if self.out.exists():
            self._adopt(self.out, "delete it or choose another --out")
        for stale in self.parts.glob("*.tmp"):
            stale.unlink()
        numbers = [-1]
        for part in sorted(self.parts.glob(PART_GLOB)):
            self._adopt(part, f"delete {self.parts} to start over")
            numbers.append(int(part.stem.removeprefix("part-")))
        self._next_part = max(numbers) + 1

    def _adopt(self, path: Path, fix: str) -> None:
        with open_hdf5(path, fix) as handle:
            recorded = file_attributes(handle)
            self._done |= feature_ids(handle)
        different = {key: (recorded.get(key), value) for key, value in self.attributes.items()
                     if recorded.get(key) != value}
        if different:
            shown = "; ".join(f"{key}: file has {old!r}, this run {new!r}"
                              for key, (old, new) in sorted(different.items()))
            raise FeatureFileError(f"{path} holds features made differently ({shown}); adding to "
                                   f"it would mix two kinds of features: {fix}")

    @property
    def done_ids(self) -> frozenset[int]:
        """Ids already in the output or in a finished part: a resumed run skips them."""
        return frozenset(self._done)

    def write_chunk(self, entries: Entries) -> None:
        """Write `{image_id: {"features": array, "boxes": ..., ...}}` as one atomic part."""
        if not entries:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        final = self.parts / f"part-{self._next_part:06d}.h5"
        temporary = final.with_name(final.name + ".tmp")
        with h5py.File(temporary, "w") as handle:
            _record(handle, self.attributes)
            for image_id, arrays in entries.items():
                for suffix, array in arrays.items():
                    handle.create_dataset(f"{image_id}_{suffix}", data=array)
        _fsync(temporary)
        os.replace(temporary, final)
        self._next_part += 1
        self._done |= set(entries)

    def finish(self) -> int:
        """Merge the parts into the output (atomically); returns the images the output holds."""
        parts = sorted(self.parts.glob(PART_GLOB))
        if not parts:
            if not self.out.exists():
                with h5py.File(self.out, "w") as handle:
                    _record(handle, self.attributes)
            return len(self._done)
        merged = self.out.with_name(f".{self.out.name}.merging.tmp")
        with h5py.File(merged, "w") as target:
            _record(target, self.attributes)
            for source_path in ([self.out] if self.out.exists() else []) + parts:
                with h5py.File(source_path, "r") as source:
                    for name in source:
                        if name not in target:
                            source.copy(source[name], target, name=name)
        _fsync(merged)
        os.replace(merged, self.out)
        shutil.rmtree(self.parts)
        return len(self._done)
