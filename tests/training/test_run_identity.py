"""A run knows what it was made from (issue 24): the data it trains on is recorded and
compared on resume, its paths are absolute, what cannot change on resume is refused, every
setting that can be checked before step 1 is, and `train.nonfinite=skip` cannot succeed on
nothing."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from helpers.training_runs import TRAIN_IMAGES, tiny_overrides
from hin import checkpoint
from hin.cli import main
from hin.config import ConfigError, RunConfig
from hin.data.errors import DataError
from hin.training import loop, rundir
from hin.training.runlog import read_log


def train(synth: Path, run_dir: Path, *extra: str, config: str = "synth_xe") -> int:
    return main(["train", "--config", config, *tiny_overrides(synth, run_dir, *extra)])


def error_line(capsys, code: int, expected: int = 2) -> str:
    """The one-line error of a `hin train` that exited `expected`, without its prefix."""
    captured = capsys.readouterr()
    assert code == expected, captured
    assert "Traceback" not in captured.err
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("hin train: error: ")
    return line.removeprefix("hin train: error: ")


def test_nonfinite_skip_stops_when_more_than_its_share_of_an_epoch_is_skipped(synth, tmp_path,
                                                                              capsys):
    run_dir = tmp_path / "run"
    code = train(synth, run_dir, "train.lr=1e30", "train.nonfinite=skip")
    message = error_line(capsys, code, expected=1)
    assert message.startswith("train.nonfinite=skip skipped 2 of the 10 batches of epoch 1")
    assert "more than train.max_skipped_share=0.05" in message and "Lower train.lr" in message
    assert not (run_dir / rundir.BEST).exists()
    assert [r["loss"] for r in read_log(run_dir) if r["event"] == "nonfinite"] == ["nan", "nan"]


def test_a_larger_share_lets_the_skips_go_on(synth, tmp_path, monkeypatch):
    real_loss, calls = loop.Trainer._xe_loss, []

    def nan_at_batches_3_and_5(self, batch):
        loss, values = real_loss(self, batch)
        calls.append(batch)
        return (loss * math.nan, values) if len(calls) in (3, 5) else (loss, values)
    monkeypatch.setattr(loop.Trainer, "_xe_loss", nan_at_batches_3_and_5)
    run_dir = tmp_path / "run"
    assert train(synth, run_dir, "train.nonfinite=skip", "train.max_skipped_share=0.2",
                 "train.epochs=1") == 0
    assert [r["step"] for r in read_log(run_dir) if r["event"] == "nonfinite"] == [3, 4]


@pytest.mark.parametrize("override, message", [
    ("train.adam_beta1=1.5", r"train.adam_beta1 must be in \[0, 1\), got 1.5"),
    ("train.adam_beta2=1.0", r"train.adam_beta2 must be in \[0, 1\), got 1.0"),
    ("train.adam_beta1=-0.1", r"train.adam_beta1 must be in \[0, 1\)"),
    ("train.max_skipped_share=1.5", r"train.max_skipped_share must be in \[0, 1\], got 1.5"),
])
def test_optimiser_and_skip_settings_are_checked_in_the_config(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.load(None, [override])


@pytest.fixture(scope="module")
def stopped_xe(synth, tmp_path_factory) -> Path:
    """An XE run stopped in the middle of its first epoch (train.max_steps=3)."""
    run_dir = tmp_path_factory.mktemp("xe") / "run"
    assert train(synth, run_dir, "train.max_steps=3", "train.checkpoint_every=1") == 0
    return run_dir


def test_a_resume_cannot_switch_to_scst_and_says_how_to_start_it(stopped_xe, capsys):
    before = (stopped_xe / rundir.LAST).read_bytes()
    code = main(["train", "--resume", str(stopped_xe), "train.stage=scst", "train.max_steps=6"])
    message = error_line(capsys, code)
    assert message.startswith(f"train.stage=scst: the run in {stopped_xe} is a xe run")
    assert f"--init {stopped_xe / rundir.BEST} run_dir=NEW_RUN_DIR" in message
    assert (stopped_xe / rundir.LAST).read_bytes() == before


def test_run_dir_given_on_resume_is_refused_not_ignored(stopped_xe, tmp_path, capsys):
    code = main(["train", "--resume", str(stopped_xe), f"run_dir={tmp_path / 'elsewhere'}",
                 "train.max_steps=6"])
    assert error_line(capsys, code).startswith(f"run_dir={tmp_path / 'elsewhere'} cannot be "
                                                f"given with --resume: the run lives in {stopped_xe}")
    assert not (tmp_path / "elsewhere").exists()


def test_relative_paths_are_resolved_once_and_a_resume_elsewhere_uses_them(synth, tmp_path,
                                                                           monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "d").symlink_to(synth)
    monkeypatch.chdir(first)
    overrides = [o for o in tiny_overrides(Path("d"), Path("r"), "train.max_steps=3")
                 if not o.startswith("data.vocabulary")] + ["data.vocabulary=d/vocab.json"]
    assert main(["train", "--config", "synth_xe", *overrides]) == 0
    written = yaml.safe_load((first / "r" / rundir.CONFIG_FILE).read_text())
    assert written["run_dir"] == str(first / "r")
    assert written["data"]["annotations"] == str(synth)
    assert written["data"]["grid_features"] == str(synth / "grid.hdf5")
    assert checkpoint.load(first / "r" / rundir.LAST)[1]["config"]["data"] == written["data"]
    monkeypatch.chdir(second)          # no `d` here: a path read again here would fail
    assert main(["train", "--resume", str(first / "r"), "train.max_steps=5"]) == 0
    assert checkpoint.load(first / "r" / rundir.LAST)[1]["training"]["progress"]["step"] == 5


@pytest.fixture
def own_synth(synth, tmp_path) -> Path:
    """A copy of the synthetic set this test may change."""
    copy = tmp_path / "data"
    shutil.copytree(synth, copy, ignore=shutil.ignore_patterns("images"))
    return copy


def test_a_run_records_its_data_at_its_start_and_in_every_checkpoint(own_synth, tmp_path):
    run_dir = tmp_path / "run"
    assert train(own_synth, run_dir, "train.max_steps=3") == 0
    recorded = json.loads((run_dir / rundir.DATA_FILE).read_text())
    assert checkpoint.load(run_dir / rundir.LAST)[1]["data_identity"] == recorded
    files = recorded["files"]
    grid = files["grid features"]
    assert grid["path"] == str(own_synth / "grid.hdf5") and grid["entries"] == 40
    assert grid["size"] == (own_synth / "grid.hdf5").stat().st_size and len(grid["tokens"]) == 1
    assert files["annotations coco_train_ids.npy"]["sha256"] == hashlib.sha256(
        (own_synth / "coco_train_ids.npy").read_bytes()).hexdigest()
    assert recorded["splits"]["train"] == {"images": TRAIN_IMAGES, "captions": 100}


def test_features_replaced_in_place_are_refused_on_resume_naming_the_file(own_synth, tmp_path,
                                                                          capsys):
    run_dir = tmp_path / "run"
    assert train(own_synth, run_dir, "train.max_steps=3") == 0
    before = (run_dir / rundir.LAST).read_bytes()
    with h5py.File(own_synth / "grid.hdf5", "a") as grid:     # same ids, shapes and size
        for name in [key for key in grid if key.endswith("_features")]:
            grid[name][...] = grid[name][()] * 0.5
    code = main(["train", "--resume", str(run_dir), "train.max_steps=6"])
    assert error_line(capsys, code) == (
        f"the data changed since {run_dir / rundir.LAST} was saved: grid features "
        f"{own_synth / 'grid.hdf5'}: its content changed (same size). Resume with the data the "
        "run was made with, or add --accept-data-change to train on with this data from an "
        "epoch boundary")
    assert (run_dir / rundir.LAST).read_bytes() == before


def test_a_train_split_that_shrank_is_refused_mid_epoch_even_when_accepted(own_synth, tmp_path,
                                                                           capsys):
    run_dir = tmp_path / "run"
    assert train(own_synth, run_dir, "train.max_steps=3") == 0
    ids = np.load(own_synth / "coco_train_ids.npy")
    np.save(own_synth / "coco_train_ids.npy", ids[:len(ids) // 2])
    code = main(["train", "--resume", str(run_dir), "train.max_steps=6", "--accept-data-change"])
    message = error_line(capsys, code)
    assert f"annotations coco_train_ids.npy {own_synth / 'coco_train_ids.npy'}: its content " \
           "changed" in message
    assert "the train split: 20 -> 11 images, 100 -> 55 captions" in message
    assert message.endswith("--accept-data-change applies at an epoch boundary only, and the run "
                            "stopped in epoch 1 after 3 batches: finish that epoch with the data "
                            "it was cut from, then accept")


def test_changed_data_is_accepted_at_an_epoch_boundary_when_asked(own_synth, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(own_synth, run_dir, "train.epochs=1") == 0
    ids = np.load(own_synth / "coco_train_ids.npy")
    np.save(own_synth / "coco_train_ids.npy", ids[:len(ids) // 2])
    capsys.readouterr()
    code = main(["train", "--resume", str(run_dir), "train.epochs=2"])
    assert "the train split: 20 -> 11 images" in error_line(capsys, code)
    assert main(["train", "--resume", str(run_dir), "train.epochs=2", "--accept-data-change"]) == 0
    assert "--accept-data-change: the data changed since" in capsys.readouterr().out
    identity = checkpoint.load(run_dir / rundir.LAST)[1]["data_identity"]
    assert identity["splits"]["train"]["images"] == 11
    assert json.loads((run_dir / rundir.DATA_FILE).read_text()) == identity


def test_a_validation_length_beyond_the_model_is_refused_before_step_1(synth, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train(synth, run_dir, "train.validation.max_len=100")
    assert error_line(capsys, code) == (
        "train.validation.max_len=100 is more than the 54 positions the model has "
        "(model.max_positions): set train.validation.max_len=54 or less")
    assert not run_dir.exists()


def test_caption_token_limits_are_checked_and_cut_captions_counted_before_step_1(own_synth,
                                                                                 tmp_path, capsys):
    path = own_synth / "captions_train2014.json"
    content = json.loads(path.read_text())
    train_ids = set(np.load(own_synth / "coco_train_ids.npy").tolist())
    long = next(ann for ann in content["annotations"] if ann["id"] in train_ids)
    long["caption"] = " ".join(["a red circle"] * 30)          # 90 words
    path.write_text(json.dumps(content))
    code = train(own_synth, tmp_path / "run", "data.max_caption_tokens=100")
    assert error_line(capsys, code) == (
        "data.max_caption_tokens=100 lets the longest training caption (92 ids with <bos> and "
        "<eos>) take 91 positions, more than the model's 54 (model.max_positions): set "
        "data.max_caption_tokens=55 or less")
    assert not (tmp_path / "run").exists()
    assert train(own_synth, tmp_path / "run", "train.max_steps=1") == 0
    assert ("1 of 100 training captions are longer than data.max_caption_tokens=54 ids (the "
            "longest has 92) and are cut to it") in capsys.readouterr().out


def test_a_failure_after_training_began_saves_last_pt_first(synth, tmp_path, monkeypatch, capsys):
    def features_went_away(self):
        raise DataError("the validation features went away")
    monkeypatch.setattr(loop.Trainer, "validate", features_went_away)
    run_dir = tmp_path / "run"
    code = train(synth, run_dir, "train.epochs=1")
    captured = capsys.readouterr()
    assert code == 2 and captured.err.strip().endswith("the validation features went away")
    assert f"saved {run_dir / rundir.LAST} (step 10) before stopping" in captured.out
    assert checkpoint.load(run_dir / rundir.LAST)[1]["training"]["progress"]["step"] == 10
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir)]) == 0     # validates the finished epoch
    assert (run_dir / rundir.BEST).is_file()
    assert checkpoint.load(run_dir / rundir.LAST)[1]["training"]["progress"]["step"] == 10


def test_training_warns_of_vocabulary_entries_no_caption_can_use(own_synth, tmp_path, capsys):
    values = json.loads((own_synth / "vocab.json").read_text())
    values["words"][-2:] = ["Magenta", "dark red"]
    (own_synth / "vocab.json").write_text(json.dumps(values))
    assert train(own_synth, tmp_path / "run", "train.max_steps=1") == 0
    assert (f"warning: {own_synth / 'vocab.json'}: 2 entries the tokenizer never produces "
            "(first: 'Magenta', 'dark red'), so no caption uses them") in capsys.readouterr().out


def test_overrides_after_init_are_taken_and_a_yaml_model_section_yields_to_init(
        synth, tmp_path, capsys):
    xe = tmp_path / "xe"
    assert train(synth, xe, "train.max_steps=2") == 0
    yaml_file = tmp_path / "fine.yaml"
    yaml_file.write_text("model:\n  d_model: 64\n  num_heads: 4\n")
    capsys.readouterr()
    run_dir = tmp_path / "fine"
    overrides = tiny_overrides(synth, run_dir)
    model_free = [o for o in overrides if not o.startswith("model.")]
    code = main(["train", "--config", str(yaml_file), *model_free[:3], "--init",
                 str(xe / rundir.LAST), *model_free[3:], "train.max_steps=3"])
    out = capsys.readouterr().out
    assert code == 0
    assert (f"note: the model comes from --init {xe / rundir.LAST}; the configuration's "
            "model.d_model=64 (checkpoint: 32) are not used") in out
    assert checkpoint.load(run_dir / rundir.LAST)[1]["training"]["progress"]["step"] == 3


def test_a_run_dir_name_too_long_says_so(synth, tmp_path, capsys):
    run_dir = tmp_path / ("r" * 260)
    code = train(synth, run_dir)
    assert error_line(capsys, code) == (f"{run_dir}: file name too long (a name in a path is at "
                                        "most 255 bytes): choose a shorter folder name")


def test_hints_quote_a_run_dir_with_spaces_for_the_shell(synth, tmp_path, capsys):
    run_dir = tmp_path / "my run é"
    assert train(synth, run_dir, "train.max_steps=2") == 0
    capsys.readouterr()
    message = error_line(capsys, train(synth, run_dir, "train.max_steps=2"))
    assert f"continue it with `hin train --resume '{run_dir}'` or choose another run_dir" in message
    finished = error_line(capsys, main(["train", "--resume", str(run_dir)]))
    assert f"e.g. `hin train --resume '{run_dir}' train.max_steps=1002`" in finished


def test_caption_refuses_huge_features_instead_of_printing_nan(own_synth, tmp_path,
                                                                           capsys):
    run_dir = tmp_path / "run"
    assert train(own_synth, run_dir, "train.max_steps=2") == 0
    image_id = min(image["id"] for image in
                   json.loads((own_synth / "captions_val2014.json").read_text())["images"])
    with h5py.File(own_synth / "grid.hdf5", "a") as handle:
        values = handle[f"{image_id}_features"][()].astype(np.float32) * np.float32(1e20)
        del handle[f"{image_id}_features"]
        handle[f"{image_id}_features"] = values
    capsys.readouterr()
    code = main(["caption", "--checkpoint", str(run_dir / rundir.LAST), "--grid",
                 str(own_synth / "grid.hdf5"), "--region", str(own_synth / "region.hdf5"),
                 "--ids", str(image_id), "--json"])
    captured = capsys.readouterr()
    assert code == 2 and "NaN" not in captured.out and "nan" not in captured.out
    assert f"image {image_id}: features hold" in captured.err and "magnitude 16384" in captured.err
