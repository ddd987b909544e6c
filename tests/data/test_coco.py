"""COCO annotations + Karpathy splits: the real id files, both sources agreeing, every error."""

import json

import numpy as np
import pytest

from helpers.data_files import write_coco
from helpers.paths import FIXTURES
from hin.data.coco import load_split, load_splits
from hin.data.errors import DataError


def test_real_karpathy_id_files_load(tmp_path):
    """The real dev/test id files, with a made-up annotation file holding exactly their ids."""
    dev = np.load(FIXTURES / "coco" / "coco_dev_ids.npy")
    test = np.load(FIXTURES / "coco" / "coco_test_ids.npy")
    annotations = sorted(dev.tolist() + test.tolist())
    # made-up image ids, kept apart between the splits (splits share no image)
    test_ids = set(test.tolist())
    image_of = {ann: ann // 10 + (10**9 if ann in test_ids else 0) for ann in annotations}
    content = {"images": [{"id": image_of[ann], "file_name": f"COCO_val2014_{image_of[ann]:012d}.jpg"}
                          for ann in annotations],
               "annotations": [{"id": ann, "image_id": image_of[ann], "caption": f"caption {ann}"}
                               for ann in annotations]}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(content))
    (tmp_path / "captions_train2014.json").write_text(json.dumps({"images": [], "annotations": []}))
    for name in ("dev", "test"):
        source = FIXTURES / "coco" / f"coco_{name}_ids.npy"
        (tmp_path / source.name).write_bytes(source.read_bytes())

    splits = load_splits(tmp_path, ["val", "test"])
    assert len(splits["val"].pairs()) == 25000 and len(splits["test"].pairs()) == 25000
    assert len(splits["val"].images) == len({int(ann) // 10 for ann in dev})
    first = splits["val"].images[min(int(ann) // 10 for ann in dev)]
    assert first.file_name == f"COCO_val2014_{first.image_id:012d}.jpg"
    assert all(caption.startswith("caption ") for caption in first.captions)
    assert set(splits["test"].captions()) == {f"caption {ann}" for ann in test.tolist()}


@pytest.fixture
def small_coco(tmp_path):
    captions = {10: ["A cat.", "A black cat"], 11: ["A dog"], 12: ["Two birds", "Birds"],
                13: ["A boat"], 14: ["A car"]}
    # annotation ids: 10 -> 1, 2; 11 -> 3; 12 -> 4, 5; 13 -> 6; 14 -> 7
    write_coco(tmp_path / "ann", captions, val_images={12, 13, 14},
               split_annotations={"train": [1, 2, 3], "restval": [4, 5], "dev": [6], "test": [7]})
    return tmp_path / "ann", captions


def test_train_is_train_plus_restval(small_coco):
    directory, captions = small_coco
    splits = load_splits(directory)
    assert splits["train"].references() == {10: captions[10], 11: captions[11], 12: captions[12]}
    assert splits["train"].pairs()[:2] == [(10, "A cat."), (10, "A black cat")]
    assert splits["val"].image_ids == [13] and splits["test"].image_ids == [14]
    assert splits["train"].images[12].file_name == "COCO_000000000012.jpg"


def test_karpathy_json_gives_the_same_splits(small_coco, tmp_path):
    directory, captions = small_coco
    karpathy_split = {10: "train", 11: "train", 12: "restval", 13: "val", 14: "test"}
    images = [{"cocoid": image_id, "filename": f"COCO_{image_id:012d}.jpg",
               "split": karpathy_split[image_id],
               "sentences": [{"raw": text, "tokens": text.lower().split()} for text in texts]}
              for image_id, texts in captions.items()]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    from_ids, from_json = load_splits(directory), load_splits(path)
    for name in ("train", "val", "test"):
        assert from_ids[name].images == from_json[name].images


def test_missing_annotation_ids_are_named(small_coco):
    directory, _ = small_coco
    np.save(directory / "coco_test_ids.npy", np.array([7, 99, 98], dtype=np.int64))
    with pytest.raises(DataError, match=r"coco_test_ids\.npy: 2 annotation ids are not in "
                                        r"captions_train2014\.json or captions_val2014\.json "
                                        r"\(first: 99, 98\)"):
        load_split(directory, "test")


def test_duplicate_ids_across_train_and_restval_are_named(small_coco):
    directory, _ = small_coco
    np.save(directory / "coco_restval_ids.npy", np.array([4, 5, 1], dtype=np.int64))
    with pytest.raises(DataError, match=r"coco_train_ids\.npy \+ .*coco_restval_ids\.npy: "
                                        r"1 annotation ids are listed more than once \(first: 1\)"):
        load_split(directory, "train")


def test_empty_captions_are_named(tmp_path):
    write_coco(tmp_path, {1: ["a cat", "  "], 2: [""]}, val_images=set(),
               split_annotations={"test": [1, 2, 3]})
    with pytest.raises(DataError, match=r"coco_test_ids\.npy: 2 annotation ids have empty "
                                        r"captions \(first: 2, 3\)"):
        load_split(tmp_path, "test")


def test_karpathy_json_errors(tmp_path):
    path = tmp_path / "dataset_coco.json"
    image = {"cocoid": 5, "filename": "x.jpg", "split": "test", "sentences": [{"raw": " "}]}
    path.write_text(json.dumps({"images": [image]}))
    with pytest.raises(DataError, match=r"dataset_coco\.json \(split test\): 1 image ids have no "
                                        r"captions or an empty caption \(first: 5\)"):
        load_split(path, "test")
    image["sentences"] = [{"raw": "a cat"}]
    path.write_text(json.dumps({"images": [image, image]}))
    with pytest.raises(DataError, match=r"1 image ids \(cocoid\) are listed more than once"):
        load_split(path, "test")


def test_missing_files_and_unknown_splits(small_coco, tmp_path):
    directory, _ = small_coco
    (directory / "coco_dev_ids.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"coco_dev_ids\.npy does not exist"):
        load_split(directory, "val")
    with pytest.raises(FileNotFoundError, match="annotations .*nowhere not found"):
        load_split(tmp_path / "nowhere", "val")
    with pytest.raises(DataError, match=r"unknown split\(s\) \['dev'\]"):
        load_splits(directory, ["dev"])
