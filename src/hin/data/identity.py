"""What a run's data is, so that a resumed run can tell whether it still trains on it.

A run records its data's identity at its start (`data.json` in the run folder) and in every
checkpoint (`data_identity`): for each annotation file its absolute path, size and sha256
(caption files and split ids are small beside features); for each feature file its path,
size, the extraction attributes it records, its number of entries, the token counts and a
digest of a sample of entries spread over the file (reading every feature would take
minutes); and the number of images and captions of each split. `changes` names, file by
file, what differs between two identities; a path alone is no difference when the content
is the same (a moved file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hin.data.coco import CAPTION_FILES, SPLIT_ID_FILES, Split
from hin.data.features import feature_ids, feature_key, file_attributes, open_hdf5
from hin.files import sha256

SAMPLED_ENTRIES = 16


def annotation_files(source: str | Path) -> list[Path]:
    """The files training reads from an annotation directory (caption files, the train and
    val split ids), or Karpathy's JSON itself."""
    source = Path(source)
    if not source.is_dir():
        return [source]
    names = [*CAPTION_FILES, *SPLIT_ID_FILES["train"], *SPLIT_ID_FILES["val"]]
    return [source / name for name in names]


def feature_identity(path: str | Path) -> dict[str, Any]:
    """A feature file's fingerprint: attributes, entry count, token counts and a digest of
    SAMPLED_ENTRIES entries spread evenly over its sorted ids."""
    path = Path(path)
    with open_hdf5(path) as handle:
        ids = sorted(feature_ids(handle))
        sample = ids[::max(1, len(ids) // SAMPLED_ENTRIES)][:SAMPLED_ENTRIES]
        digest, tokens = hashlib.sha256(), set()
        for image_id in sample:
            values = np.ascontiguousarray(handle[feature_key(image_id)][()])
            tokens.add(int(values.shape[0]) if values.ndim else 0)
            digest.update(f"{image_id}:{values.dtype}:{values.shape}".encode())
            digest.update(values.tobytes())
        attributes = {key: _plain(value) for key, value in file_attributes(handle).items()}
    return {"path": str(path), "size": path.stat().st_size, "attributes": attributes,
            "entries": len(ids), "tokens": sorted(tokens), "sample_sha256": digest.hexdigest()}


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON holds it (arrays as lists, byte strings as text)."""
    value = value.tolist() if isinstance(value, np.ndarray) else value
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def data_identity(annotations: str | Path, grid: str | Path, region: str | Path,
                  splits: Mapping[str, Split]) -> dict[str, Any]:
    """The identity of a run's data (see the module docstring), as a plain dict."""
    files: dict[str, dict[str, Any]] = {
        f"annotations {path.name}": {"path": str(path), "size": path.stat().st_size,
                                     "sha256": sha256(path)}
        for path in annotation_files(annotations)}
    files["grid features"] = feature_identity(grid)
    files["region features"] = feature_identity(region)
    return {"files": files,
            "splits": {name: {"images": len(split.images),
                              "captions": sum(len(image.captions) for image in split.images.values())}
                       for name, split in splits.items()}}


def changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded and a current identity, one phrase per difference,
    naming the file (or split) and what changed."""
    found = []
    for role, old in recorded.get("files", {}).items():
        new = current.get("files", {}).get(role)
        if new is None:
            found.append(f"{role} {old['path']} is no longer read")
            continue
        where = f"{role} {new['path']}" + (f" (was {old['path']})" if new["path"] != old["path"] else "")
        differ = [key for key in old if key != "path" and old[key] != new.get(key)]
        if "attributes" in differ:
            keys = sorted(key for key in {**old["attributes"], **new["attributes"]}
                          if old["attributes"].get(key) != new["attributes"].get(key))
            found.append(f"{where}: its recorded extraction differs ("
                         + ", ".join(f"{key} {old['attributes'].get(key)!r} -> "
                                     f"{new['attributes'].get(key)!r}" for key in keys) + ")")
        elif "entries" in differ or "tokens" in differ:
            found.append(f"{where}: {old['entries']} -> {new['entries']} entries, token counts "
                         f"{old['tokens']} -> {new['tokens']}")
        elif differ:
            size = ("same size" if old["size"] == new["size"] else
                    f"{old['size']} -> {new['size']} bytes")
            found.append(f"{where}: its content changed ({size})")
    for name, old in recorded.get("splits", {}).items():
        new = current.get("splits", {}).get(name)
        if new is not None and new != old:
            found.append(f"the {name} split: {old['images']} -> {new['images']} images, "
                         f"{old['captions']} -> {new['captions']} captions")
    return found
