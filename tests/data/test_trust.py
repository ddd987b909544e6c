"""Data that cannot be trusted is refused before it is used (issue 24): splits that share an
image or a caption, features too large for the model's arithmetic, scores that are not
numbers in JSON."""

from __future__ import annotations

import json
import math
import re

import h5py
import numpy as np
import pytest
import torch

from helpers.data_files import write_coco, write_features
from hin.cli import main
from hin.config import DecodingConfig, HINConfig
from hin.data.coco import load_splits
from hin.data.errors import DataError
from hin.data.features import MAX_FEATURE_MAGNITUDE, FeatureStore, _exponent_counts
from hin.data.identity import changes, feature_identity
from hin.data.vocab import Vocabulary
from hin.decoding import caption
from hin.errors import HINError
from hin.extract.shapes import GRID_DIM, REGION_DIM
from hin.files import FileFormatError, json_text, write_json
from hin.model import HIN
from hin.synth import generate


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


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_huge_values_are_counted_exactly_at_the_limit(dtype):
    """The exponent test behind every feature read counts |x| >= 2**14, no more, no less
    (NaN/inf apart)."""
    limit = MAX_FEATURE_MAGNITUDE
    values = np.array([0.0, -0.0, 1.5, limit * 0.999, -limit, limit, limit * 2, np.inf, np.nan],
                      dtype=dtype)
    for array in (values, np.tile(values, (3, 2))[:, ::3]):
        nonfinite, huge = _exponent_counts(array)
        finite = array[np.isfinite(array)]
        assert nonfinite == array.size - finite.size
        assert huge == np.count_nonzero(np.abs(finite) >= limit)


@pytest.fixture
def small_synth(tmp_path):
    out = tmp_path / "synth"
    generate(out, seed=0, train=4, val=2, test=2, min_freq=1, progress=False)
    return out


def scale_entry(path, image_id, factor):
    """Rewrite one image's features as float32 times `factor` (finite: 1e20 fits float32)."""
    with h5py.File(path, "a") as handle:
        values = handle[f"{image_id}_features"][()].astype(np.float32) * np.float32(factor)
        del handle[f"{image_id}_features"]
        handle[f"{image_id}_features"] = values
    assert np.isfinite(values).all()


def test_finite_but_huge_features_fail_the_check_and_the_loader(small_synth, capsys):
    image_id = load_splits(small_synth, ["test"])["test"].image_ids[0]
    scale_entry(small_synth / "grid.hdf5", image_id, 1e20)
    code = main(["data", "check", "--annotations", str(small_synth), "--grid", str(small_synth / "grid.hdf5"),
                 "--region", str(small_synth / "region.hdf5"), "--split", "test"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(rf"grid\.hdf5: image {image_id}: features hold \d+ values of magnitude "
                     r"16384 or more \(largest \d.*e\+\d+\)", out)
    store = FeatureStore(small_synth / "grid.hdf5", small_synth / "region.hdf5", grid_dim=GRID_DIM,
                         region_dim=REGION_DIM)
    with pytest.raises(DataError, match=rf"image {image_id}: features hold \d+ values of magnitude"):
        store[image_id]


def test_a_caption_whose_score_is_not_a_number_is_an_error_naming_the_image():
    model = HIN(HINConfig(vocab_size=12, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                          grid_dim=6, region_dim=5)).eval()
    words = Vocabulary(["<unk>", "<pad>", "<bos>", "<eos>", *(f"w{i}" for i in range(8))], [0] * 12)
    grid, region = torch.rand(2, 4, 6), torch.rand(2, 3, 5)
    settings = DecodingConfig(beam_size=2, max_len=5)
    assert len(caption(model, grid, region, words, settings, names=["a", "b"])) == 2
    grid[1, 0, 0] = 1e30   # finite, but beyond what the model's arithmetic holds
    with pytest.raises(HINError, match=r"^image b: decoding gave a score that is not a number "
                                       r"\(nan\), so its caption means nothing: its features"):
        caption(model, grid, region, words, settings, names=["a", "b"])
    grid[1, 0, 0] = 0.5
    with torch.no_grad():
        next(model.parameters()).fill_(math.inf)      # a diverged training run
    with pytest.raises(HINError, match=r"^image a: .*: the model's weights are not all finite"):
        caption(model, grid, region, words, settings, names=["a", "b"])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_no_json_hin_writes_holds_nan_or_infinity(tmp_path, value):
    with pytest.raises(FileFormatError, match="not a number"):
        json_text({"score": value})
    with pytest.raises(FileFormatError):
        write_json(tmp_path / "x.json", [value])
    assert not (tmp_path / "x.json").exists()
    assert json.loads(json_text({"score": 1.5, "text": "é"})) == {"score": 1.5, "text": "é"}


def test_files_with_a_utf8_byte_order_mark_are_read(coco, tmp_path):
    for name in ("captions_train2014.json", "captions_val2014.json"):
        path = coco / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_splits(coco, ["train"])["train"].image_ids == [10, 11, 12]
    vocab = Vocabulary.from_counts({"cat": 2, "dog": 1}, 1)
    vocab.save(tmp_path / "vocab.json")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "vocab.json").read_bytes())
    assert Vocabulary.load(tmp_path / "bom.json").words == vocab.words


def test_hand_edited_vocabulary_entries_the_tokenizer_never_produces_are_found():
    vocab = Vocabulary.from_counts({"cat": 3, "Magenta": 2, "dark red": 2, "dog": 1}, 1)
    assert vocab.unreachable() == ["Magenta", "dark red"]


def test_a_feature_files_identity_is_plain_json_and_changes_with_its_content(tmp_path):
    grid, _ = write_features(tmp_path, {1: 1, 2: 1, 3: 1})
    with h5py.File(grid, "a") as handle:
        handle.attrs["hin_extractor"] = np.bytes_(b"clip-grid")
        handle.attrs["hin_grid_rows"] = np.int64(2)
        handle.attrs["hin_mean"] = np.array([0.5, 0.25])
    first = feature_identity(grid)
    assert json.loads(json_text(first)) == first
    assert first["attributes"] == {"extractor": "clip-grid", "grid_rows": 2, "mean": [0.5, 0.25]}
    assert (first["entries"], first["tokens"]) == (3, [4])
    with h5py.File(grid, "a") as handle:
        handle["2_features"][0, 0] += 1
    second = feature_identity(grid)
    assert second["sample_sha256"] != first["sample_sha256"] and second["size"] == first["size"]
    assert changes({"files": {"grid features": first}}, {"files": {"grid features": second}}) == [
        f"grid features {grid}: its content changed (same size)"]
