"""Small data files written on the fly for the data tests (features, COCO annotations)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

GRID_TOKENS, GRID_DIM, REGION_DIM = 4, 6, 5


def write_features(directory: Path, region_counts: dict[int, int], dtype: str = "float16",
                   seed: int = 0) -> tuple[Path, Path]:
    """Grid [4, 6] and region [n, 5] entries (all values nonzero) for each image id."""
    rng = np.random.default_rng(seed)
    grid_path, region_path = directory / "grid.hdf5", directory / "region.hdf5"
    with h5py.File(grid_path, "w") as grid, h5py.File(region_path, "w") as region:
        for image_id, count in region_counts.items():
            grid_values = rng.uniform(0.5, 1.5, (GRID_TOKENS, GRID_DIM))
            grid[f"{image_id}_features"] = grid_values.astype(dtype)
            region_values = rng.uniform(0.5, 1.5, (count, REGION_DIM))
            region[f"{image_id}_features"] = region_values.astype(dtype)
            region[f"{image_id}_boxes"] = np.zeros((count, 4), np.float32)
    return grid_path, region_path


def write_coco(directory: Path, captions: dict[int, list[str]], val_images: set[int],
               split_annotations: dict[str, list[int]]) -> None:
    """COCO caption files (annotation ids numbered 1.. in image order) and split id arrays."""
    files = {name: {"images": [], "annotations": []}
             for name in ("captions_train2014.json", "captions_val2014.json")}
    annotation_id = 1
    for image_id, texts in captions.items():
        name = "captions_val2014.json" if image_id in val_images else "captions_train2014.json"
        content = files[name]
        content["images"].append({"id": image_id, "file_name": f"COCO_{image_id:012d}.jpg"})
        for text in texts:
            content["annotations"].append(
                {"id": annotation_id, "image_id": image_id, "caption": text})
            annotation_id += 1
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content))
    for name, ids in split_annotations.items():
        np.save(directory / f"coco_{name}_ids.npy", np.asarray(ids, dtype=np.int64))
