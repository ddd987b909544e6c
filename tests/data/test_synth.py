"""Synthetic dataset: determinism, real formats end to end, statistics, and the CLI commands."""

import json

import h5py
import numpy as np
import pytest

from hin.cli import main
from hin.data.coco import load_splits
from hin.data.dataset import CaptionPairs, collate
from hin.data.errors import DataError
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary
from hin.extract.shapes import GRID_DIM, REGION_DIM
from hin.synth import (
    CAPTIONS_PER_IMAGE,
    GRID_FILE,
    IMAGES_DIR,
    OUTPUT_FILES,
    REGION_FILE,
    SCENES_FILE,
    SHAPES,
    generate,
)

SIZES = {"train": 40, "val": 10, "test": 10}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, generate(out, seed=7, progress=False, **SIZES)


def test_same_seed_gives_identical_files_and_another_seed_does_not(generated, tmp_path):
    out, _ = generated
    generate(tmp_path / "again", seed=7, progress=False, **SIZES)
    for name in OUTPUT_FILES:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    pictures = sorted((out / IMAGES_DIR).iterdir())
    assert len(pictures) == sum(SIZES.values())
    assert all(p.read_bytes() == (tmp_path / "again" / IMAGES_DIR / p.name).read_bytes()
               for p in pictures)
    generate(tmp_path / "other", seed=8, progress=False, **SIZES)
    assert (out / "captions_train2014.json").read_bytes() != \
        (tmp_path / "other" / "captions_train2014.json").read_bytes()


def test_files_load_through_the_real_readers(generated):
    out, manifest = generated
    splits = load_splits(out)
    assert {name: len(split.images) for name, split in splits.items()} == SIZES
    assert all(len(image.captions) == CAPTIONS_PER_IMAGE
               for split in splits.values() for image in split.images.values())
    assert len(np.load(out / "coco_restval_ids.npy")) == 4 * CAPTIONS_PER_IMAGE
    store = FeatureStore(out / GRID_FILE, out / REGION_FILE, grid_dim=GRID_DIM,
                         region_dim=REGION_DIM)
    for split in splits.values():
        assert store.check(split.image_ids, progress=False).ok
    vocab = Vocabulary.load(out / "vocab.json")
    assert len(vocab) == manifest["vocabulary"]["size"]
    assert {"red", "circle", "left", "shapes"} <= set(vocab.words)
    batch = collate([CaptionPairs(splits["train"], store, vocab, max_len=30)[index]
                     for index in range(5)], vocab.pad_id)
    assert batch.grid.shape == (5, 64, GRID_DIM) and batch.region.shape == (5, 50, REGION_DIM)
    assert (batch.tokens[:, 0] == vocab.bos_id).all()


def test_region_entries_follow_the_released_layout_and_the_scenes(generated):
    out, _ = generated
    scenes = json.loads((out / SCENES_FILE).read_text())
    with h5py.File(out / REGION_FILE) as regions, h5py.File(out / GRID_FILE) as grid:
        assert grid.attrs["hin_extractor"] == "synth-grid" and grid.attrs["hin_grid_rows"] == 8
        assert regions.attrs["hin_extractor"] == "synth-regions"
        for image_id, objects in scenes.items():
            assert grid[f"{image_id}_features"].dtype == np.float16
            count = regions[f"{image_id}_features"].shape[0]
            assert 1 <= count <= 3 and regions[f"{image_id}_features"].shape[1] == REGION_DIM
            assert regions[f"{image_id}_size"][()].tolist() == [96, 96]
            assert regions[f"{image_id}_cls_prob"][()].tolist() == [1.0] * count
            boxes = regions[f"{image_id}_boxes"][()]
            assert boxes.tolist() == [obj["box"] for obj in objects]
            assert {obj["shape"] for obj in objects} <= set(SHAPES)
            x1, y1, x2, y2 = boxes.T
            sides = np.maximum(x2 - x1, y2 - y1)
            large = np.array([obj["size"] == "large" for obj in objects])
            assert (sides[large] >= 19).all() and (sides[~large] <= 16).all()


def test_captions_are_varied_and_the_manifest_says_so(generated):
    out, manifest = generated
    assert json.loads((out / "manifest.json").read_text()) == manifest
    train = manifest["splits"]["train"]
    assert train["images"] == 40 and train["captions"] == 200
    assert train["distinct_captions"] > 150
    assert train["most_frequent_caption_share"] < 0.05
    assert "| train | 40 | 200 |" in (out / "README.md").read_text()


def test_refuses_to_overwrite_without_force(generated):
    out, _ = generated
    with pytest.raises(DataError, match="already holds captions_train2014.json.*--force"):
        generate(out, seed=7, progress=False, **SIZES)


def test_force_with_fewer_images_leaves_only_the_new_worlds_pictures(tmp_path):
    out = tmp_path / "world"
    generate(out, seed=1, progress=False, train=6, val=2, test=2, min_freq=1)
    (out / "images" / "my-notes.png").write_bytes(b"")          # not the world's: kept
    generate(out, seed=2, progress=False, train=3, val=1, test=1, min_freq=1, overwrite=True)
    listed = {image["file_name"] for name in ("captions_train2014.json", "captions_val2014.json")
              for image in json.loads((out / name).read_text())["images"]}
    assert {p.name for p in (out / "images").iterdir()} == listed | {"my-notes.png"}
    assert len(listed) == 5


def test_cli_synth_and_check(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--train", "12", "--val", "4",
                 "--test", "4", "--min-freq", "2"]) == 0
    assert "val 4 images / 20 captions" in capsys.readouterr().out
    paths = ["--annotations", str(out), "--grid", str(out / GRID_FILE),
             "--region", str(out / REGION_FILE)]
    assert main(["data", "check", *paths, "--split", "val"]) == 0
    assert "all entries present and well-formed" in capsys.readouterr().out
    test_ids = load_splits(out, ["test"])["test"].image_ids
    with h5py.File(out / REGION_FILE, "a") as regions:
        del regions[f"{test_ids[1]}_features"]
    assert main(["data", "check", *paths, "--split", "test", "--shapes-only"]) == 1
    assert f"1 image ids missing (first: {test_ids[1]})" in capsys.readouterr().out
    assert main(["data", "vocab", "--annotations", str(out), "--out", str(tmp_path / "v.json"),
                 "--min-freq", "2"]) == 0
    assert Vocabulary.load(tmp_path / "v.json").words == Vocabulary.load(out / "vocab.json").words
