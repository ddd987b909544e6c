"""The corner world of the explain tests: a white 100x100 picture with one red object in its
top-left corner, its grid and region features (4x4 cells, two boxes), annotations, and tiny
checkpoints that caption it."""

from __future__ import annotations

import h5py
import numpy as np
import torch
from PIL import Image

from helpers.data_files import write_coco
from hin.checkpoint import save
from hin.config import HINConfig
from hin.data.features import ImageGeometry
from hin.data.vocab import Vocabulary
from hin.explain import ModelView
from hin.model import HIN

SIDE, ROWS, COLS = 100, 4, 4
GRID_DIM, REGION_DIM = 12, 10
OBJECT_BOX = [0, 0, 25, 25]          # the red object, top-left corner
IDS = [11, 12, 13]


def corner_picture() -> Image.Image:
    pixels = np.full((SIDE, SIDE, 3), 255, np.uint8)
    pixels[:25, :25] = (220, 30, 30)
    return Image.fromarray(pixels)


def corner_view(label="model", boxes=True) -> ModelView:
    geometry = ImageGeometry(1, (SIDE, SIDE), (ROWS, COLS), (0.0, 0.0, float(SIDE), float(SIDE)),
                             np.array([OBJECT_BOX, [50, 50, 100, 100]], np.float32) if boxes else None,
                             () if boxes else ("region.h5 has no region boxes ('1_boxes') for image 1",))
    grid_map = np.zeros(ROWS * COLS)
    grid_map[0] = 1.0                                   # all attention on the top-left cell
    return ModelView(label, "a red square", ("a", "red", "square"), grid_map, np.array([0.9, 0.1]), geometry)


def write_corner_features(directory, with_boxes=True):
    """Grid (4x4 cells over the whole 100x100 picture) and region files for IDS, with geometry."""
    rng = np.random.default_rng(0)
    grid_path, region_path = directory / "grid.h5", directory / "region.h5"
    with h5py.File(grid_path, "w") as grid, h5py.File(region_path, "w") as region:
        grid.attrs.update({"hin_grid_rows": ROWS, "hin_grid_cols": COLS})
        for image_id in IDS:
            grid[f"{image_id}_features"] = rng.normal(size=(ROWS * COLS, GRID_DIM)).astype(np.float16)
            grid[f"{image_id}_size"] = np.array([SIDE, SIDE])
            grid[f"{image_id}_crop"] = np.array([0, 0, SIDE, SIDE], np.float32)
            region[f"{image_id}_features"] = rng.normal(size=(2, REGION_DIM)).astype(np.float16)
            if with_boxes:
                region[f"{image_id}_boxes"] = np.array([OBJECT_BOX, [50, 50, 100, 100]], np.float32)
                region[f"{image_id}_size"] = np.array([SIDE, SIDE])
    return grid_path, region_path


def tiny_checkpoint(path, seed):
    vocab = Vocabulary.from_counts({"a": 9, "red": 8, "square": 7, "on": 6, "white": 5}, min_freq=1)
    torch.manual_seed(seed)
    model = HIN(HINConfig(vocab_size=len(vocab), num_layers=2, d_model=32, num_heads=4, d_ff=64,
                          dropout=0.0, grid_dim=GRID_DIM, region_dim=REGION_DIM)).eval()
    return save(path, model, vocabulary=vocab.to_dict())


def make_corner_data(root):
    """Feature files, pictures (none for image 13) and annotations of the corner world in `root`."""
    grid, region = write_corner_features(root)
    pictures = root / "pictures"
    pictures.mkdir()
    for image_id in IDS[:2]:                              # image 13 has no picture
        corner_picture().save(pictures / f"COCO_val2014_{image_id:012d}.png")
    write_coco(root / "annotations", {i: ["a red square", "a red square on white"] for i in IDS},
               val_images=set(IDS), split_annotations={"test": [1, 2, 3, 4, 5, 6]})
    return root, grid, region, pictures


def figure_arguments(root, grid, region, pictures, *extra):
    return ["explain", "--checkpoint", str(tiny_checkpoint(root / "a.pt", seed=0)), "--grid", str(grid),
            "--region", str(region), "--images", str(pictures), "--annotations", str(root / "annotations"),
            "--split", "test", "--beam", "2", *extra]
