"""Feature files in the released HDF5 layout, written so that a killed run never corrupts one.

HDF5 keeps no journal: a process killed while it adds datasets to a file can leave the whole
file unreadable. So extraction never writes into the output file while it runs:

1. each chunk of images goes to its own small part file, built in memory, written under a
   temporary name and renamed into `<out>.parts/` when complete (a rename is atomic), so a part
   is whole or absent;
2. when every image is done, the existing output (if any) and the parts are copied into a new
   file beside the output, which is renamed over it; the parts are deleted after that rename.

A kill at any moment leaves the previous output intact and every finished part on disk; the
next run skips the ids found in either and completes the merge. The price is one sequential
copy of the output per finished run. Every file records who wrote it (`hin_*` attributes), and
a run refuses to mix features from another extractor or model into an existing output.

A sharded run (shards.py) does the same into its shard file `<out>.shard-K-of-N.h5`, skipping
the ids the output already holds. `merge_shards` joins a finished set of shard files into the
output the same atomic way; so does the next un-sharded run, which also adopts the shards'
unfinished parts. An id met twice in a merge must be identical (a merge killed after its
rename leaves such copies behind); different features under one id are refused.
"""

from __future__ import annotations

import glob
import io
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hin.data.features import ATTRIBUTE_PREFIX, feature_ids, file_attributes, open_hdf5
from hin.errors import HINError, Interrupted
from hin.extract.shards import Shard
from hin.files import OutOfSpaceError, atomic_write, out_of_space, refuse_overwriting

PART_GLOB = "part-*.h5"
SHARD_KEYS = ("shard", "shard_of")      # attributes only a shard file has

Entries = Mapping[int, Mapping[str, np.ndarray]]
SOURCE_KEY = ATTRIBUTE_PREFIX + "source"   # on `<id>_features`: the picture's "size:mtime_ns"


class FeatureFileError(HINError, ValueError):
    """An output file or part that cannot be extended safely; the message says which and why."""


def _record(handle: h5py.File, attributes: Mapping[str, Any]) -> None:
    handle.attrs.update({ATTRIBUTE_PREFIX + key: value for key, value in attributes.items()})


def _entries_in(handle: h5py.File) -> dict[int, list[str]]:
    """Dataset names by image id (`42_features`, `42_global` -> 42)."""
    entries: dict[int, list[str]] = defaultdict(list)
    for name in handle:
        entries[int(name.split("_", 1)[0])].append(name)
    return entries


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def _shard_glob(out: Path, suffix: str = "") -> list[Path]:
    pattern = f"{glob.escape(out.stem)}.shard-*-of-*{glob.escape(out.suffix + suffix)}"
    return sorted(out.parent.glob(pattern))


def shard_files(out: str | Path) -> list[Path]:
    """The finished shard files of output `out` found beside it."""
    return _shard_glob(Path(out))


def _read_record(path: Path, fix: str) -> tuple[dict[str, Any], set[int]]:
    """A feature file's `hin_*` attributes and image ids."""
    with open_hdf5(path, fix) as handle:
        return file_attributes(handle), feature_ids(handle)


def _require_same(path: Path, recorded: Mapping[str, Any], expected: Mapping[str, Any],
                  fix: str) -> None:
    different = {key: (recorded.get(key), value) for key, value in expected.items()
                 if recorded.get(key) != value}
    if different:
        shown = "; ".join(f"{key}: file has {old!r}, this run {new!r}"
                          for key, (old, new) in sorted(different.items()))
        raise FeatureFileError(f"{path} holds features made differently ({shown}); adding to "
                               f"it would mix two kinds of features: {fix}")


def discard_features(out: str | Path) -> None:
    """`hin extract --force`: the output, its parts, its shard files and theirs, removed, so
    that every picture is extracted again."""
    out = Path(out)
    for path in [out, *shard_files(out)]:
        path.unlink(missing_ok=True)
    for directory in [parts_dir(out), *_shard_glob(out, ".parts")]:
        shutil.rmtree(directory, ignore_errors=True)


class FeatureWriter:
    """Adds images to feature file `out` (or to its shard `shard`) chunk by chunk; see the module
    docstring for why. `shard_of` fingerprints the whole picture list a shard was cut from."""

    def __init__(self, out: str | Path, attributes: Mapping[str, Any],
                 shard: Shard | None = None, shard_of: str = "") -> None:
        self.out = Path(out)
        self.attributes = dict(attributes)
        self.target = shard.path(self.out) if shard else self.out
        self.target_attributes = (
            {**self.attributes, "shard": str(shard), "shard_of": shard_of} if shard
            else self.attributes)
        self.parts = parts_dir(self.target)
        self._done: set[int] = set()
        self._holding: list[Path] = []           # the files adopted: where done ids are
        self._adopted: list[Path] = []           # shard files and shard parts to merge
        self._adopted_dirs: list[Path] = []      # shard parts folders, deleted once merged
        if self.out.exists():
            self._adopt(self.out, self.attributes, "delete it or choose another --out")
        if shard is None:
            self._adopted_dirs = _shard_glob(self.out, ".parts")
            for path in shard_files(self.out) + [part for directory in self._adopted_dirs
                                                 for part in sorted(directory.glob(PART_GLOB))]:
                self._adopt(path, self.attributes, f"delete it, or write {self.out} elsewhere")
                self._adopted.append(path)
        elif self.target.exists():
            self._adopt(self.target, self.target_attributes, "delete it to redo this shard")
        for stale in self.parts.glob("*.tmp"):
            stale.unlink()
        numbers = [-1]
        for part in sorted(self.parts.glob(PART_GLOB)):
            self._adopt(part, self.target_attributes, f"delete {self.parts} to start over")
            numbers.append(int(part.stem.removeprefix("part-")))
        self._next_part = max(numbers) + 1

    def _adopt(self, path: Path, expected: Mapping[str, Any], fix: str) -> None:
        recorded, ids = _read_record(path, fix)
        _require_same(path, recorded, expected, fix)
        self._done |= ids
        self._holding.append(path)

    def recorded_sources(self, ids: set[int]) -> dict[int, str]:
        """The source each of `ids` was extracted from ("size:mtime_ns" of its picture), where
        its entry records one (files written before hin recorded sources do not)."""
        sources: dict[int, str] = {}
        for path in self._holding:
            with h5py.File(path, "r") as handle:
                for image_id in ids - set(sources):
                    entry = handle.get(f"{image_id}_features")
                    if entry is not None and SOURCE_KEY in entry.attrs:
                        sources[image_id] = str(entry.attrs[SOURCE_KEY])
        return sources

    @property
    def done_ids(self) -> frozenset[int]:
        """Ids already in the output, its shards or a finished part: a resumed run skips them."""
        return frozenset(self._done)

    def write_chunk(self, entries: Entries, sources: Mapping[int, str] | None = None) -> None:
        """Write `{image_id: {"features": array, "boxes": ..., ...}}` as one atomic part, with
        the source of each picture (`sources`, "size:mtime_ns") where given."""
        if not entries:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        final = self.parts / f"part-{self._next_part:06d}.h5"
        # Built in memory and written by hin.files: HDF5 itself never meets a full disk (it
        # reports one in dozens of messages and can crash the interpreter when it closes).
        image = io.BytesIO()
        with h5py.File(image, "w") as handle:
            _record(handle, self.target_attributes)
            for image_id, arrays in entries.items():
                for suffix, array in arrays.items():
                    handle.create_dataset(f"{image_id}_{suffix}", data=array)
                if sources and image_id in sources:
                    handle[f"{image_id}_features"].attrs[SOURCE_KEY] = sources[image_id]
        try:
            with atomic_write(final, "wb") as file:
                file.write(image.getbuffer())
        except OutOfSpaceError:
            raise OutOfSpaceError(
                f"no space left on the device writing {final}; the {len(self._done)} images "
                f"already in {self.target.name} or its finished parts are kept: free some "
                "space and run the same command again to resume") from None
        self._next_part += 1
        self._done |= set(entries)

    def finish(self) -> int:
        """Merge the parts (and adopted shards) into the target file atomically; returns the
        images that file holds."""
        sources = self._adopted + sorted(self.parts.glob(PART_GLOB))
        if not sources:
            if not self.target.exists():
                with h5py.File(self.target, "w") as handle:
                    _record(handle, self.target_attributes)
            with h5py.File(self.target, "r") as handle:
                return len(feature_ids(handle))
        existing = [self.target] if self.target.exists() else []
        images = merge_files(self.target, existing + sources, self.target_attributes)
        for path in self._adopted:
            path.unlink(missing_ok=True)
        for directory in [*self._adopted_dirs, self.parts]:
            shutil.rmtree(directory, ignore_errors=True)
        return images


def merge_files(target: Path, sources: Sequence[Path], attributes: Mapping[str, Any]) -> int:
    """Copy every entry of `sources` into a new file renamed over `target` (never half-written);
    returns the images it holds. An id in two sources must be identical in both."""
    merged_path = target.with_name(f".{target.name}.merging.tmp")
    merged_path.unlink(missing_ok=True)     # left by a merge killed outright (kill -9)
    _require_space(target, sources)
    try:
        images = _copy_entries(merged_path, sources, attributes)
        _fsync(merged_path)
    except BaseException as error:
        merged_path.unlink(missing_ok=True)
        kept = f"{target} is as it was" if target.exists() else f"no {target.name} was written"
        if out_of_space(error):
            raise OutOfSpaceError(f"no space left on the device merging into {target}; the "
                                  f"partial copy was removed and {kept}: free some space and "
                                  "run the same command again") from None
        if isinstance(error, KeyboardInterrupt):
            raise Interrupted(f"interrupted while merging into {target}; the partial copy was "
                              f"removed and {kept}: run the same command again to merge") from None
        raise
    os.replace(merged_path, target)
    return images


def _require_space(target: Path, sources: Sequence[Path]) -> None:
    """A merge writes a full copy beside `target` before replacing it: check the room first."""
    needed = sum(path.stat().st_size for path in sources)
    free = shutil.disk_usage(target.parent).free
    if needed > free:
        raise OutOfSpaceError(
            f"merging into {target} writes a new copy of about {needed / 1e6:,.1f} MB beside it "
            f"before replacing it, and only {free / 1e6:,.1f} MB are free in {target.parent}: "
            "free some space (or move the files to a larger disk) and run the same command "
            "again; nothing was changed")


def _copy_entries(merged_path: Path, sources: Sequence[Path],
                  attributes: Mapping[str, Any]) -> int:
    """Every entry of `sources` into a new file `merged_path`; returns the images it holds."""
    found_in: dict[int, tuple[Path, list[str]]] = {}
    with h5py.File(merged_path, "w") as merged:
        _record(merged, attributes)
        for path in sources:
            with h5py.File(path, "r") as source:
                for image_id, names in _entries_in(source).items():
                    if image_id not in found_in:
                        for name in names:
                            source.copy(source[name], merged, name=name)
                        found_in[image_id] = path, names
                    elif not _same_entry(source, names, merged, found_in[image_id][1]):
                        raise FeatureFileError(
                            f"image id {image_id} has different features in "
                            f"{found_in[image_id][0]} and {path}; delete the wrong file (or that "
                            "id) and merge again")
    return len(found_in)


def _same_entry(source: h5py.File, names: list[str], merged: h5py.File,
                merged_names: list[str]) -> bool:
    """The same datasets (names, dtypes, shapes, values, attributes) in both files."""
    if sorted(names) != sorted(merged_names):
        return False
    return all(_same_array(source[name], merged[name])
               and sorted(source[name].attrs) == sorted(merged[name].attrs)
               and all(_same_array(source[name].attrs[key], merged[name].attrs[key])
                       for key in source[name].attrs)
               for name in names)


def _same_array(ours: object, theirs: object) -> bool:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    return ours.dtype == theirs.dtype and ours.shape == theirs.shape and np.array_equal(ours, theirs)


@dataclass
class MergeReport:
    out: Path
    shards: list[Path]
    images_in_file: int

    def summary(self) -> str:
        return (f"{self.out}: merged {len(self.shards)} shard files; the file holds "
                f"{self.images_in_file} images")


def merge_shards(out: str | Path, shards: Sequence[str | Path] = ()) -> MergeReport:
    """Join shard files (by default every `<out>.shard-K-of-N.h5` beside `out`) into `out`,
    after checking that they are whole sets of finished shards made alike; see the module
    docstring. The shard files are deleted once `out` holds them."""
    out = Path(out)
    paths = list(dict.fromkeys(Path(path) for path in shards)) or shard_files(out)
    out_record = _read_record(out, "delete it or merge into another file") if out.exists() else None
    if out_record is not None and "shard" in out_record[0]:
        raise FeatureFileError(
            f"{out} is a shard file, but the first argument of `hin extract merge` is OUT, the "
            f"file the shards are merged into: `hin extract merge OUT [SHARDS...]`, e.g. "
            f"`hin extract merge {_merged_name(out)} {out} ...`; nothing was merged")
    refuse_overwriting(out, {f"shard file {path}": path for path in paths},
                       "OUT is the merged file, never one of the shards; nothing was merged")
    if not paths:
        raise FeatureFileError(
            f"no shard files to merge into {out}: `hin extract ... --out {out} --shard K/N` "
            f"writes {Shard(1, 2).path(out).name}, {Shard(2, 2).path(out).name}, ... beside it; "
            "or name the shard files")
    fix = "name only finished shard files of one extraction"
    records = {path: _read_record(path, fix) for path in paths}
    first = records[paths[0]][0]
    attributes = {key: value for key, value in first.items() if key not in SHARD_KEYS}
    out_ids: set[int] = set()
    if out_record is not None:
        recorded, out_ids = out_record
        _require_same(out, recorded, attributes, "merge into another file")
    runs: dict[tuple[int, object], dict[int, Path]] = defaultdict(dict)
    for path, (recorded, _) in records.items():
        if "shard" not in recorded:
            raise FeatureFileError(f"{path} is not a shard file (it records no shard); {fix}")
        _require_same(path, recorded, attributes, fix)
        shard = Shard.parse(str(recorded["shard"]))
        run = runs[shard.count, recorded.get("shard_of")]
        if shard.index in run:
            raise FeatureFileError(f"{run[shard.index]} and {path} are both shard {shard}; {fix}")
        run[shard.index] = path
    for (count, shard_of), run in runs.items():
        missing = [Shard(index, count) for index in range(1, count + 1) if index not in run]
        merged_before = all(records[path][1] <= out_ids for path in run.values())
        if missing and not merged_before:
            others = {str(recorded["shard"]): (path, recorded["shard_of"])
                      for path, (recorded, _) in records.items()
                      if recorded.get("shard_of") != shard_of}
            raise FeatureFileError("; ".join(_unfinished(out, shard, shard_of, others)
                                             for shard in missing) + "; nothing was merged")
    existing = [out] if out.exists() else []
    images = merge_files(out, existing + paths, attributes)
    for path in paths:
        path.unlink()
    return MergeReport(out, paths, images)


def _merged_name(shard_path: Path) -> Path:
    """`grid.shard-1-of-4.h5` -> `grid.h5` (what OUT probably should have been)."""
    return shard_path.with_name(re.sub(r"\.shard-\d+-of-\d+(?=\.[^.]*$|$)", "", shard_path.name))


def _unfinished(out: Path, shard: Shard, shard_of: object,
                others: Mapping[str, tuple[Path, object]]) -> str:
    """Why shard `shard` of the pictures `shard_of` is not among the files to merge, and what
    to do; `others` are the given shards of other picture lists, by "K/N"."""
    if str(shard) in others:
        path, other_list = others[str(shard)]
        return (f"{path} is shard {shard} of other pictures ({other_list}, not {shard_of}): "
                f"run shard {shard} again on the same pictures as the others")
    parts = parts_dir(shard.path(out))
    if parts.exists():
        images = 0
        for part in parts.glob(PART_GLOB):
            images += len(_read_record(part, f"delete {parts} and run shard {shard} again")[1])
        return (f"shard {shard} has not finished ({images} images so far in {parts}): run it "
                f"again with --shard {shard} to finish it")
    return (f"shard {shard} is missing ({shard.path(out).name} was not found or given): run it "
            f"with --shard {shard}, or copy its file here")
