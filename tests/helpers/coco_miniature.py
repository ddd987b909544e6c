"""A COCO-shaped miniature of the authors' released data folder, under the released names.

docs/reproduce.md's runnable blocks run against it (tests/project/test_docs.py): `data/coco/` holds
`annotations/` (COCO 2014 caption files and the Karpathy split id arrays), the CLIP ViT-L/14
grid file `COCO2014_ViT-L-14.hdf5` ([256, 1024] per image), the VinVL region file
`COCO2014_VinVL.hdf5` ([n, 2048] with boxes, size and class probabilities), their twins for
COCO's online test images (`COCO2014_ViT-L-14_test.hdf5`, `COCO2014_VinVL_TEST.hdf5`), the
reference's `vocab.pkl` (the real 10,201-entry pickle) and `HIN_best_test.pth`, a small
untrained model saved as the reference's train.py saves checkpoints, under its parameter names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import torch

from helpers.data_files import write_coco
from helpers.paths import FIXTURES
from helpers.reference_checkpoints import save_like_reference_training
from hin.checkpoint import reference_name
from hin.config import HINConfig
from hin.model import HIN

GRID_FILE, REGION_FILE = "COCO2014_ViT-L-14.hdf5", "COCO2014_VinVL.hdf5"
TEST_GRID_FILE, TEST_REGION_FILE = "COCO2014_ViT-L-14_test.hdf5", "COCO2014_VinVL_TEST.hdf5"
CHECKPOINT_FILE, VOCAB_FILE = "HIN_best_test.pth", "vocab.pkl"
CHECKPOINT_HEADS = 8
SCENES = ["a man riding a horse on a beach", "a dog sitting on a red couch",
          "two people playing frisbee in a park", "a plate of food on a table",
          "a white bus driving down a street", "a cat sitting next to a window"]
SPLIT_IMAGES = {"train": range(100, 103), "restval": range(103, 104), "dev": range(200, 202),
                "test": range(300, 302)}
SERVER_IMAGES = range(900, 902)      # COCO's test2014 images: features, no captions


def _captions(image_id: int) -> list[str]:
    return [f"{SCENES[(image_id + shift) % len(SCENES)]}" + (" ." if shift % 2 else "")
            for shift in range(5)]


def _write_features(grid_path: Path, region_path: Path, image_ids: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(grid_path, "w") as grid, h5py.File(region_path, "w") as region:
        for image_id in image_ids:
            count = 10 + image_id % 7
            grid[f"{image_id}_features"] = rng.standard_normal((256, 1024)).astype(np.float32)
            region[f"{image_id}_features"] = rng.uniform(0.1, 2.0, (count, 2048)).astype(np.float32)
            corners = rng.uniform(0, 300, (count, 2))
            region[f"{image_id}_boxes"] = np.hstack([corners, corners + 100]).astype(np.float32)
            region[f"{image_id}_size"] = np.array([480, 640], np.int64)
            region[f"{image_id}_cls_prob"] = rng.dirichlet(np.ones(8), count).astype(np.float32)


def _write_reference_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    model = HIN(HINConfig(num_layers=1, d_model=16, num_heads=CHECKPOINT_HEADS, d_ff=32,
                          dropout=0.0))
    save_like_reference_training({reference_name(name): tensor for name, tensor
                                  in model.state_dict().items()}, path)


def coco_miniature(root: Path) -> Path:
    """Write the miniature as `root/data/coco` (the authors' data folder, unpacked there)."""
    coco = root / "data" / "coco"
    image_ids = {part: list(ids) for part, ids in SPLIT_IMAGES.items()}
    captions = {image_id: _captions(image_id) for ids in image_ids.values() for image_id in ids}
    first_annotation = {}
    number = 1
    for image_id, texts in captions.items():
        first_annotation[image_id] = number
        number += len(texts)
    split_annotations = {part: [first_annotation[image_id] + k for image_id in ids for k in range(5)]
                         for part, ids in image_ids.items()}
    val_images = {image_id for part in ("restval", "dev", "test") for image_id in image_ids[part]}
    write_coco(coco / "annotations", captions, val_images, split_annotations)
    _write_features(coco / GRID_FILE, coco / REGION_FILE, list(captions), seed=0)
    _write_features(coco / TEST_GRID_FILE, coco / TEST_REGION_FILE, list(SERVER_IMAGES), seed=1)
    shutil.copyfile(FIXTURES / "vocab_m2_legacy.pkl", coco / VOCAB_FILE)
    _write_reference_checkpoint(coco / CHECKPOINT_FILE)
    return coco
