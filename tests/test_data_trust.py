"""Data that cannot be trusted is refused before it is used (issue 24): splits that share an
image or a caption, features too large for the model's arithmetic, scores that are not
numbers in JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_files import write_coco
from hin.cli import main
from hin.data.coco import load_splits
from hin.data.errors import DataError


@pytest.fixture
def coco(tmp_path):
    captions = {10: ["A cat.", "A black cat"], 11: ["A dog"], 12: ["Two birds", "Birds"],
                13: ["A boat"], 14: ["A car"]}
    # annotation ids: 10 -> 1, 2; 11 -> 3; 12 -> 4, 5; 13 -> 6; 14 -> 7
    write_coco(tmp_path / "ann", captions, val_images={12, 13, 14},
               split_annotations={"train": [1, 2, 3], "restval": [4, 5], "dev": [6], "test": [7]})
    return tmp_path / "ann"


def test_a_caption_id_in_train_and_test_is_refused_even_when_only_train_is_loaded(coco):
    np.save(coco / "coco_test_ids.npy", np.array([7, 3], dtype=np.int64))
    with pytest.raises(DataError, match=r"1 annotation \(caption\) ids are in both the train and "
                                        r"the test split \(first: 3\)"):
        load_splits(coco, ["train", "val"])


def test_an_image_in_two_splits_by_another_caption_is_refused(coco):
    np.save(coco / "coco_dev_ids.npy", np.array([6, 2], dtype=np.int64))   # 2: image 10's
    np.save(coco / "coco_train_ids.npy", np.array([1, 3], dtype=np.int64))
    with pytest.raises(DataError, match=r"1 image ids are in both the train and the val split "
                                        r"\(first: 10\)"):
        load_splits(coco, ["val"])


def test_karpathy_json_with_an_image_in_train_and_test_is_refused(tmp_path):
    entry = {"cocoid": 5, "filename": "x.jpg", "sentences": [{"raw": "a cat"}]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [{**entry, "split": "train"},
                                           {**entry, "split": "test"},
                                           {**entry, "cocoid": 6, "split": "val"}]}))
    with pytest.raises(DataError, match=r"1 image ids \(cocoid\) are in both the train and the "
                                        r"test split \(first: 5\)"):
        load_splits(path, ["train", "val"])


def test_data_check_refuses_overlapping_splits(coco, tmp_path, capsys):
    np.save(coco / "coco_test_ids.npy", np.array([7, 1, 2], dtype=np.int64))
    code = main(["data", "check", "--annotations", str(coco), "--grid", str(tmp_path / "g.hdf5"),
                 "--region", str(tmp_path / "r.hdf5")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "2 annotation (caption) ids are in both the train and the test split (first: 1, 2)" in err
