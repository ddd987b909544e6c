"""Mistakes a user makes with files end in one line naming the file and the fix (exit 2), never
a traceback: damaged HDF5 feature files, truncated vocabulary pickles, folders where a file
belongs, an `--out` that is a file, and pictures too large to decode."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from conftest import FIXTURES
from hin import evaluate as evaluate_module
from hin.caption import Captioner
from hin.checkpoint import save
from hin.cli import main
from hin.config import DataConfig, DecodingConfig, HINConfig
from hin.data.features import FeatureStore
from hin.data.shape_features import GRID_DIM, REGION_DIM
from hin.data.synth import generate
from hin.data.vocab import Vocabulary, VocabularyError
from hin.errors import UsageError
from hin.extract.images import MAX_PIXELS_ENV, PictureError, load_rgb, max_pixels
from hin.model import HIN
from training_runs import tiny_overrides

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
    monkeypatch.setattr(evaluate_module, "load", no_loading)
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--split", "test",
                 "--annotations", str(data), "--grid", str(data / "grid.hdf5"),
                 "--region", str(data / "region.hdf5"), "--workers", "0", "--no-spice",
                 "--out", str(out)])
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
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--split", "test",
                 "--annotations", str(data), "--grid", str(data / "grid.hdf5"),
                 "--region", str(data / "region.hdf5"), "--workers", "0", "--no-spice",
                 "--out", str(out)])
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
