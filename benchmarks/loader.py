"""Loader throughput at the paper's sizes: batches/s of XE training batches with 0 and 2 workers.

Writes temporary fp16 feature files (grid 256x1024, regions up to 50x2048) and a caption
split, then times `make_loader` over them. The page cache is warm after the first pass,
as it is during training. Usage: python benchmarks/loader.py [--images 400] [--batch 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from hin.data.coco import ImageRecord, Split
from hin.data.dataset import CaptionPairs, make_loader
from hin.data.features import FeatureStore, feature_key
from hin.data.vocab import Vocabulary

GRID_SHAPE = (256, 1024)
REGION_DIM = 2048
CAPTIONS = ("a man riding a wave on top of a surfboard", "a dog sitting next to a red car",
            "two people standing in a kitchen", "a plate of food on a wooden table",
            "a giraffe standing in a grassy field")


def write_files(directory: Path, images: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    grid_path, region_path = directory / "grid.hdf5", directory / "region.hdf5"
    with h5py.File(grid_path, "w") as grid, h5py.File(region_path, "w") as region:
        for image_id in range(images):
            grid_values = rng.standard_normal(GRID_SHAPE, np.float32)
            grid[feature_key(image_id)] = grid_values.astype(np.float16)
            count = int(rng.integers(10, 51))
            region[feature_key(image_id)] = rng.standard_normal((count, REGION_DIM),
                                                                np.float32).astype(np.float16)
    return grid_path, region_path


def measure(dataset: CaptionPairs, batch_size: int, workers: int, passes: int) -> float:
    loader = make_loader(dataset, batch_size, shuffle=True, num_workers=workers)
    for _ in loader:  # warm-up pass: workers start, page cache fills
        pass
    started, batches = time.perf_counter(), 0
    for _ in range(passes):
        for _ in loader:
            batches += 1
    return batches / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        paths = write_files(Path(directory), args.images)
        split = Split("train", {image_id: ImageRecord(image_id, f"{image_id}.jpg", CAPTIONS)
                                for image_id in range(args.images)}, directory)
        vocab = Vocabulary.build(CAPTIONS, min_freq=1)
        dataset = CaptionPairs(split, FeatureStore(*paths), vocab, max_len=54)
        print(f"{args.images} images x {len(CAPTIONS)} captions, grid {list(GRID_SHAPE)} fp16, "
              f"regions 10-50 x {REGION_DIM} fp16 padded to 50, batch {args.batch}")
        for workers in (0, 2):
            rate = measure(dataset, args.batch, workers, args.passes)
            print(f"workers={workers}: {rate:.1f} batches/s ({rate * args.batch:.0f} samples/s)")


if __name__ == "__main__":
    main()
