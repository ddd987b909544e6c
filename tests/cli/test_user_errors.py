"""Mistakes a user makes with files end in one line naming the file and the fix (exit 2), never
a traceback: damaged HDF5 feature files, truncated vocabulary pickles, folders where a file
belongs, an `--out` that is a file, and pictures too large to decode."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.paths import FIXTURES
from helpers.training_runs import tiny_overrides
from hin import evaluate as evaluate_module
from hin.caption import Captioner
from hin.checkpoint import save
from hin.cli import main
from hin.config import DataConfig, DecodingConfig, HINConfig
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary, VocabularyError
from hin.errors import UsageError
from hin.extract.images import MAX_PIXELS_ENV, PictureError, load_rgb, max_pixels
from hin.extract.shapes import GRID_DIM, REGION_DIM
from hin.model import HIN
from hin.synth import generate

FIXTURES_PKL = "vocab_m2_legacy.pkl"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic set, a truncated copy of its grid file, and tiny checkpoints with and
    without a recorded vocabulary."""
    root = tmp_path_factory.mktemp("user_errors")
    data = root / "synth"
    generate(data, train=20, val=4, test=4, min_freq=1, progress=False)
    grid = (data / "grid.hdf5").read_bytes()
    (root / "broken.hdf5").write_bytes(grid[:len(grid) // 2])
    vocab = Vocabulary.load(data / "vocab.json")
    model = HIN(HINConfig(vocab_size=len(vocab), num_layers=1, d_model=16, num_heads=2, d_ff=32,
                          dropout=0.0))
    with_vocab = save(root / "with_vocab.pt", model, vocabulary=vocab.to_dict())
    without_vocab = save(root / "without_vocab.pt", model)
    return root, data, with_vocab, without_vocab


def one_line_error(capsys, code: int, *fragments: str) -> str:
    """Exit 2 and a last stderr line `hin CMD: error: ...` holding every fragment; no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("hin ") and ": error: " in line
    for fragment in fragments:
        assert fragment in line
    return line


def evaluate_args(checkpoint, data, out, *more: str) -> list[str]:
    """`hin evaluate` of the test split of the world's data set into `out`."""
    return ["evaluate", "--checkpoint", str(checkpoint), "--split", "test", "--annotations",
            str(data), "--grid", str(data / "grid.hdf5"), "--region", str(data / "region.hdf5"),
            "--workers", "0", "--no-spice", "--out", str(out), *more]


def test_damaged_hdf5_is_named_in_data_check(world, capsys):
    root, data, _, _ = world
    code = main(["data", "check", "--annotations", str(data), "--grid", str(root / "broken.hdf5"),
                 "--region", str(data / "region.hdf5"), "--split", "test"])
    one_line_error(capsys, code, f"feature file {root / 'broken.hdf5'} is not a readable HDF5 file",
                   "truncated")


def test_damaged_hdf5_is_named_in_evaluate(world, capsys):
    root, data, checkpoint, _ = world
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--split", "test",
                 "--annotations", str(data), "--grid", str(root / "broken.hdf5"),
                 "--region", str(data / "region.hdf5"), "--workers", "0", "--no-spice",
                 "--out", str(root / "eval")])
    one_line_error(capsys, code, f"{root / 'broken.hdf5'} is not a readable HDF5 file")


def test_damaged_hdf5_is_named_in_caption(world, capsys):
    root, data, checkpoint, _ = world
    code = main(["caption", "--checkpoint", str(checkpoint), "--grid", str(root / "broken.hdf5"),
                 "--region", str(data / "region.hdf5"), "--ids", "100001"])
    one_line_error(capsys, code, f"{root / 'broken.hdf5'} is not a readable HDF5 file")


def test_damaged_hdf5_is_named_in_training(world, tmp_path, capsys):
    root, data, _, _ = world
    code = main(["train", "--config", "synth_xe", *tiny_overrides(data, tmp_path / "run"),
                 f"data.region_features={root / 'broken.hdf5'}"])
    one_line_error(capsys, code, f"{root / 'broken.hdf5'} is not a readable HDF5 file")


@pytest.mark.parametrize("keep", [0, 0.5, -1], ids=["empty", "half", "last-byte-missing"])
def test_truncated_legacy_vocabulary_pickle(keep, tmp_path, capsys):
    content = (FIXTURES / FIXTURES_PKL).read_bytes()
    truncated = tmp_path / "vocab.pkl"
    truncated.write_bytes(content[:int(len(content) * keep)] if keep >= 0 else content[:-1])
    with pytest.raises(VocabularyError, match="truncated or corrupted"):
        Vocabulary.from_legacy_pickle(truncated)
    code = main(["data", "vocab", "--legacy", str(truncated), "--out", str(tmp_path / "v.json")])
    one_line_error(capsys, code, f"{truncated} is not a readable vocabulary pickle")
    assert not (tmp_path / "v.json").exists()


def test_evaluate_out_that_is_a_file_is_refused_before_any_work(world, tmp_path, monkeypatch,
                                                                  capsys):
    root, data, checkpoint, _ = world
    out = tmp_path / "results.json"
    out.write_text("keep me")

    def no_loading(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before --out was checked")
    monkeypatch.setattr(evaluate_module, "open_for_decoding", no_loading)
    code = main(evaluate_args(checkpoint, data, out))
    one_line_error(capsys, code, f"--out {out} is a file", "give a directory")
    assert out.read_text() == "keep me"


def test_a_folder_given_as_vocabulary_says_so(world, tmp_path, capsys):
    root, data, _, without_vocab = world
    with pytest.raises(IsADirectoryError, match=f"vocabulary file {tmp_path} is a directory"):
        Vocabulary.load(tmp_path)
    code = main(["caption", "--checkpoint", str(without_vocab), "--vocab", str(tmp_path),
                 "--grid", str(data / "grid.hdf5"), "--region", str(data / "region.hdf5"),
                 "--ids", "100001"])
    one_line_error(capsys, code, f"vocabulary file {tmp_path} is a directory, not a file")


def test_a_folder_given_as_annotation_or_results_json_says_so(world, tmp_path, capsys):
    _, data, _, _ = world
    results = tmp_path / "captions.json"
    results.write_text(json.dumps([{"image_id": 100001, "caption": "a red circle"}]))
    code = main(["score", "--results", str(results), "--annotations", str(tmp_path),
                 "--only-results", "--no-spice"])
    one_line_error(capsys, code, f"annotation file {tmp_path} is a directory")
    code = main(["score", "--results", str(tmp_path), "--annotations",
                 str(data / "captions_val2014.json"), "--no-spice"])
    one_line_error(capsys, code, f"results file {tmp_path} is a directory")
    (tmp_path / "captions_train2014.json").mkdir()
    code = main(["data", "check", "--annotations", str(tmp_path), "--grid", str(data / "grid.hdf5"),
                 "--region", str(data / "region.hdf5")])
    one_line_error(capsys, code, f"{tmp_path / 'captions_train2014.json'} is a directory")


def test_a_folder_given_as_feature_file_says_so(world, tmp_path, capsys):
    _, data, _, _ = world
    code = main(["data", "check", "--annotations", str(data), "--grid", str(tmp_path),
                 "--region", str(data / "region.hdf5")])
    one_line_error(capsys, code, f"feature file {tmp_path} is a directory, not a file")


def test_pictures_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "7.png"
    Image.new("RGB", (100, 80)).save(path)
    assert load_rgb(path, limit=8000).size == (100, 80)
    with pytest.raises(PictureError, match=r"100x80 is 8,000 pixels, over the limit of 1,000 .*"
                                           rf"raise the limit with {MAX_PIXELS_ENV}=8000"):
        load_rgb(path, limit=1000)
    assert max_pixels() == 64_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "7999")
    with pytest.raises(PictureError, match="over the limit of 7,999 "):
        load_rgb(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="HIN_MAX_PIXELS='lots' is not a positive whole number"):
        max_pixels()


def test_score_refuses_to_write_its_metrics_over_the_results(world, tmp_path, capsys):
    _, data, _, _ = world
    results = tmp_path / "c.json"
    results.write_text(json.dumps([{"image_id": 100001, "caption": "a red circle"}]))
    kept = results.read_text()
    code = main(["score", "--results", str(results), "--annotations",
                 str(data / "captions_val2014.json"), "--only-results", "--no-spice",
                 "--out", str(results)])
    one_line_error(capsys, code, f"{results} is also --results; writing there would replace it")
    assert results.read_text() == kept


def test_evaluate_refuses_an_out_folder_whose_files_are_its_inputs(world, tmp_path, capsys):
    root, data, checkpoint, _ = world
    out = tmp_path / "eval"
    out.mkdir()
    (out / "captions.json").symlink_to(data / "grid.hdf5")
    code = main(evaluate_args(checkpoint, data, out))
    one_line_error(capsys, code, "captions.json is also --grid", "give --out a folder of its own")


def test_data_vocab_refuses_to_write_over_its_annotations(world, tmp_path, capsys):
    _, data, _, _ = world
    annotations = tmp_path / "dataset_coco.json"
    annotations.write_text("{}")
    code = main(["data", "vocab", "--annotations", str(annotations), "--out", str(annotations)])
    one_line_error(capsys, code, "is also --annotations")
    assert annotations.read_text() == "{}"


def test_the_regions_a_checkpoint_was_trained_with_are_used_unless_overridden(world, tmp_path,
                                                                              capsys):
    """A model trained with data.max_regions=1 is given one region by evaluate, caption,
    explain and serve (all through Captioner or evaluate), not the default 50."""
    _, data, _, _ = world
    vocab = Vocabulary.load(data / "vocab.json")
    torch.manual_seed(0)
    model = HIN(HINConfig(vocab_size=len(vocab), num_layers=1, d_model=16, num_heads=2, d_ff=32,
                          dropout=0.0, grid_dim=GRID_DIM, region_dim=REGION_DIM))
    one = save(tmp_path / "one.pt", model, vocabulary=vocab.to_dict(),
               config={"data": {"max_regions": 1}})
    paper = save(tmp_path / "paper.pt", model, vocabulary=vocab.to_dict())
    ids = [100001, 100002]
    grid, region = data / "grid.hdf5", data / "region.hdf5"
    decoding = DecodingConfig(beam_size=2, max_len=6)
    captioner = Captioner(one, decoding=decoding, device="cpu")
    assert captioner.max_regions == 1 and captioner.notes == []
    store = FeatureStore(grid, region, max_regions=1, grid_dim=model.config.grid_dim,
                         region_dim=model.config.region_dim)
    grids, regions = zip(*(store[i] for i in ids))
    assert ([c.captions for c in captioner.caption_features(grid, region, ids)]
            == [c.captions for c in captioner.caption_arrays(ids, grids, regions)])
    overridden = Captioner(one, decoding=decoding, device="cpu", max_regions=50)
    assert overridden.max_regions == 50
    assert overridden.notes == [f"max_regions 50 overrides the 1 regions per image {one} was "
                                "trained with"]
    assert Captioner(paper, device="cpu").max_regions == 50   # records none: the paper's
    config = DataConfig(annotations=str(data), grid_features=str(grid),
                        region_features=str(region), num_workers=0)
    default = evaluate_module.evaluate([one], "features", config, decoding=decoding,
                                       progress=False, device="cpu")
    assert default.notes == [] and default.captions == evaluate_module.evaluate(
        [one], "features", replace(config, max_regions=50), decoding=decoding, progress=False,
        device="cpu", max_regions=1).captions
    code = main(["evaluate", "--checkpoint", str(one), "--split", "features", "--grid", str(grid),
                 "--region", str(region), "--workers", "0", "--beam", "2", "--max-len", "6",
                 "--max-regions", "50", "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert code == 0
    assert "hin evaluate: note: max_regions 50 overrides the 1 regions" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"trained with different numbers of regions per image "
                                         r"\(.*one.pt: 1, .*paper.pt: 50\).*--max-regions"):
        evaluate_module.evaluate([one, paper], "features", config, progress=False)


# -- data and features ---------------------------------------------------------------------

@pytest.fixture
def odd_grid(world, tmp_path):
    """A copy of the synthetic grid file with the four kinds of entries hin cannot read: a
    group named like features (100002), 63 grid tokens instead of 64 (100003), a name that is
    no id, and image 100001 again with its id zero-padded."""
    _, data, _, _ = world
    grid = tmp_path / "grid.hdf5"
    shutil.copy(data / "grid.hdf5", grid)
    with h5py.File(grid, "a") as handle:
        del handle["100002_features"]
        handle.create_group("100002_features")
        short = handle["100003_features"][:63]
        del handle["100003_features"]
        handle["100003_features"] = short
        handle["abc_features"] = handle["100004_features"][()]
        handle["0100001_features"] = handle["100001_features"][()] + 1
    return grid


def test_data_check_reports_every_feature_entry_hin_cannot_use(world, odd_grid, capsys):
    _, data, _, _ = world
    code = main(["data", "check", "--annotations", str(data), "--grid", str(odd_grid),
                 "--region", str(data / "region.hdf5"), "--split", "train"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{odd_grid}: image 100002: the features entry is an HDF5 group, not an array" in out
    assert (f"{odd_grid}: image 100003: has 63 grid tokens, expected 64 (the file records a 8x8 "
            "grid)") in out
    assert f"{odd_grid}: entry 'abc_features' does not name an image id" in out
    assert (f"{odd_grid}: entry '0100001_features' writes image id 100001 with leading zeros, so "
            "it is never read ('100001_features' also exists)") in out
    assert "all entries present and well-formed" not in out


def test_caption_of_odd_feature_entries_is_one_line(world, odd_grid, capsys):
    _, data, _, _ = world
    vocab = Vocabulary.load(data / "vocab.json")
    model = HIN(HINConfig(vocab_size=len(vocab), num_layers=1, d_model=16, num_heads=2, d_ff=32,
                          dropout=0.0, grid_dim=GRID_DIM, region_dim=REGION_DIM))
    checkpoint = save(odd_grid.parent / "m.pt", model, vocabulary=vocab.to_dict())
    common = ["caption", "--checkpoint", str(checkpoint), "--grid", str(odd_grid),
              "--region", str(data / "region.hdf5"), "--device", "cpu", "--ids"]
    one_line_error(capsys, main([*common, "100001", "100003"]),
                   "images in one batch need the same number of grid tokens: image 100001 has "
                   "64, 100003 has 63")
    one_line_error(capsys, main([*common, "100002"]),
                   "image 100002: the features entry is an HDF5 group, not an array")


def test_explain_names_malformed_boxes_crop_and_box_counts_instead_of_failing(world, tmp_path):
    _, data, _, _ = world
    grid, region = tmp_path / "grid.hdf5", tmp_path / "region.hdf5"
    shutil.copy(data / "grid.hdf5", grid)
    shutil.copy(data / "region.hdf5", region)
    with h5py.File(grid, "a") as grid_file, h5py.File(region, "a") as region_file:
        del grid_file["100001_crop"]
        grid_file["100001_crop"] = np.array([1.0, 2.0])
        rows = len(region_file["100001_features"])
        del region_file["100001_boxes"]
        region_file["100001_boxes"] = np.ones((rows, 3), np.float32)
        boxes = region_file["100002_boxes"][()]
        del region_file["100002_boxes"]
        region_file["100002_boxes"] = np.concatenate([boxes, boxes])
    store = FeatureStore(grid, region, grid_dim=GRID_DIM, region_dim=REGION_DIM)
    first, second = store.geometry(100001), store.geometry(100002)
    assert first.boxes is None and first.grid_box is None
    assert f"{grid}: '100001_crop' holds 2 values, expected 4 (x1, y1, x2, y2)" in first.missing
    assert (f"{region}: '100001_boxes' has shape [{rows}, 3], expected [n, 4] (x1, y1, x2, y2 "
            "per region)") in first.missing
    assert second.boxes is None
    assert any(f"has {2 * len(boxes)} boxes but {len(boxes)} region features for image 100002"
               in line for line in second.missing)


def test_karpathy_json_with_a_number_as_caption_or_an_unknown_split_is_refused(tmp_path, capsys):
    image = {"cocoid": 7, "filename": "7.jpg", "split": "train", "sentences": [{"raw": "a dog"}]}
    for change, fragment in (({"sentences": [{"raw": 12345}]},
                              "image entry 0: (cocoid 7) sentence 0 has 'raw' 12345, not the "
                              "caption's text"),
                             ({"split": "training"},
                              "image entry 0: (cocoid 7) has split 'training'; the split names "
                              "are train, restval, val, test")):
        annotations = tmp_path / "dataset_coco.json"
        annotations.write_text(json.dumps({"images": [{**image, **change}]}))
        code = main(["data", "vocab", "--annotations", str(annotations),
                     "--out", str(tmp_path / "vocab.json")])
        one_line_error(capsys, code, fragment)


@pytest.mark.parametrize("content, fragment", [
    (["<unk>", "<pad>", "<bos>", "<eos>", "dog"], "holds a JSON list, not a hin vocabulary"),
    ({"format": "hin-vocabulary", "version": 1, "words": ["<unk>", "<pad>", "<bos>", "<eos>"]},
     "has no 'counts' list"),
    ({"format": "hin-vocabulary", "version": 1, "words": ["<unk>", "<pad>", "<bos>", "<eos>", 7],
      "counts": [0, 0, 0, 0, 1]}, "words are non-empty text; 7 at entry 4 is not"),
    ({"format": "hin-vocabulary", "version": 1, "words": ["<unk>", "<pad>", "<bos>", "<eos>", ""],
      "counts": [0, 0, 0, 0, 1]}, "words are non-empty text; '' at entry 4 is not"),
], ids=["plain-list", "no-counts", "number-word", "empty-word"])
def test_malformed_vocabulary_file_is_one_line(world, tmp_path, capsys, content, fragment):
    _, data, _, without_vocab = world
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(content))
    code = main(["caption", "--checkpoint", str(without_vocab), "--vocab", str(path),
                 "--grid", str(data / "grid.hdf5"), "--region", str(data / "region.hdf5"),
                 "--ids", "100001"])
    one_line_error(capsys, code, fragment)


def test_data_vocab_with_a_minimum_frequency_nothing_reaches_is_refused(world, tmp_path, capsys):
    _, data, _, _ = world
    code = main(["data", "vocab", "--annotations", str(data), "--min-freq", "100000",
                 "--out", str(tmp_path / "vocab.json")])
    one_line_error(capsys, code, "no word occurs 100000 times", "lower the minimum frequency")
    assert not (tmp_path / "vocab.json").exists()


# -- evaluation and captioning -------------------------------------------------------------

def test_a_lone_surrogate_in_a_caption_is_one_line(world, tmp_path, capsys):
    _, data, _, _ = world
    results = tmp_path / "c.json"
    results.write_text('[{"image_id": 100021, "caption": "a \\ud800 dog"}]')
    code = main(["score", "--results", str(results), "--annotations",
                 str(data / "captions_val2014.json"), "--only-results", "--no-spice"])
    one_line_error(capsys, code, "a caption of image id 100021 holds '\\ud800', half of a UTF-16 "
                                 "surrogate pair and no character")


@pytest.mark.parametrize("flags, fragment", [
    (["--batch-size", "0"], "batch size must be at least 1, got 0"),
    (["--beam", "100000"], "beam size 100000 is not between 1 and the model's vocabulary size"),
    (["--max-len", "55"], "maximum caption length 55 is not between 1 and the 54 positions the "
                          "model has: give --max-len 54 or less"),
], ids=["batch-0", "beam-over-vocabulary", "max-len-over-positions"])
def test_decoding_settings_the_model_cannot_use_are_refused_before_decoding(
        world, tmp_path, monkeypatch, capsys, flags, fragment):
    root, data, with_vocab, _ = world

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")
    monkeypatch.setattr(evaluate_module, "caption_batches", no_decoding)
    code = main(evaluate_args(with_vocab, data, tmp_path / "eval", *flags))
    one_line_error(capsys, code, fragment)
    code = main(["caption", "--checkpoint", str(with_vocab), "--grid", str(data / "grid.hdf5"),
                 "--region", str(data / "region.hdf5"), "--ids", "100001", *flags])
    one_line_error(capsys, code, fragment)
