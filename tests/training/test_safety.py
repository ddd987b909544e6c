"""A user's mistakes, kills and full disks around `hin train` end in one line (exit 2, what is
wrong and what to do) or are handled, and every file they had is left as it was: checks
before the run folder exists, the run folder's lock, refusals on resume, repairs, and why a
run stopped."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers.paths import SRC
from helpers.training_runs import TRAIN_IMAGES, tiny_overrides
from hin import checkpoint
from hin.cli import main
from hin.config import ConfigError, RunConfig
from hin.data.coco import load_splits
from hin.data.dataset import ImageReferences, make_loader
from hin.data.errors import DataError
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary
from hin.extract.shapes import GRID_DIM, REGION_DIM
from hin.locks import LOCK_FILE
from hin.training import loop, rundir
from hin.training.plot import current_history
from hin.training.runlog import LOG_FILE, read_log


@pytest.fixture(scope="module")
def xe_best(synth, tmp_path_factory) -> Path:
    """A finished one-epoch XE run: the --init of the SCST cases."""
    run_dir = tmp_path_factory.mktemp("xe") / "run"
    assert main(["train", "--config", "synth_xe",
                 *tiny_overrides(synth, run_dir, "train.epochs=1")]) == 0
    return run_dir / rundir.BEST


def train(synth: Path, run_dir: Path, *extra: str, config: str = "synth_xe") -> int:
    return main(["train", "--config", config, *tiny_overrides(synth, run_dir, *extra)])


def one_line_error(capsys, code: int) -> str:
    """Exit 2 and the message of the last stderr line (after `hin train: error: `)."""
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("hin train: error: ")
    return line.removeprefix("hin train: error: ")


def karpathy(synth: Path, path: Path, split_of) -> Path:
    """A dataset_coco.json of the synthetic images, each image's split chosen by
    `split_of(index, original split)`."""
    images = []
    for name, split in load_splits(synth, ["train", "val", "test"]).items():
        for image in split.images.values():
            images.append({"cocoid": image.image_id, "filename": image.file_name,
                           "split": split_of(len(images), name),
                           "sentences": [{"raw": caption} for caption in image.captions]})
    path.write_text(json.dumps({"images": images}))
    return path


# -- checked before the run folder is created ---------------------------------------------

@pytest.mark.parametrize("stage", ["xe", "scst"])
def test_an_empty_training_split_is_refused_before_the_run_folder_exists(synth, xe_best, tmp_path,
                                                                         capsys, stage):
    annotations = karpathy(synth, tmp_path / "no_train.json",
                           lambda i, name: "test" if name == "train" else name)
    run_dir = tmp_path / "run"
    init = ["--init", str(xe_best)] if stage == "scst" else []
    code = main(["train", "--config", f"synth_{stage}", *init,
                 *tiny_overrides(synth, run_dir, f"data.annotations={annotations}")])
    assert one_line_error(capsys, code) == (
        f"the train split of {annotations} holds no images; training needs training and "
        "validation images: check each image's split (train, restval, val, test) in the "
        "annotations")
    assert not run_dir.exists()


def test_no_validation_images_is_refused_before_the_run_folder_exists(synth, tmp_path, capsys):
    annotations = karpathy(synth, tmp_path / "no_val.json",
                           lambda i, name: "test" if name == "val" else name)
    run_dir = tmp_path / "run"
    code = train(synth, run_dir, f"data.annotations={annotations}")
    assert one_line_error(capsys, code).startswith(f"the val split of {annotations} holds no images")
    assert not run_dir.exists()


def test_fewer_captions_than_one_batch_is_refused(synth, tmp_path, capsys):
    annotations = karpathy(synth, tmp_path / "one.json",
                           lambda i, name: name if name != "train" or i == 0 else "test")
    run_dir = tmp_path / "run"
    code = train(synth, run_dir, f"data.annotations={annotations}", "train.captions_per_image=1")
    assert one_line_error(capsys, code) == (
        f"the training split of {annotations} has 5 captions, fewer than one batch of "
        "train.batch_size=10 (batches count captions): lower train.batch_size to at most 5")
    assert not run_dir.exists()
    code = train(synth, run_dir, f"data.annotations={annotations}")      # synth_xe: groups of 5
    assert one_line_error(capsys, code).endswith(
        "has 1 groups of up to 5 captions, fewer than one batch of train.batch_size=10 (a batch "
        "holds 2 groups): lower train.batch_size to at most 5")


def test_scst_on_fewer_images_than_one_batch_is_refused(synth, xe_best, tmp_path, capsys):
    run_dir = tmp_path / "scst"
    code = main(["train", "--config", "synth_scst", "--init", str(xe_best),
                 *tiny_overrides(synth, run_dir, "train.batch_size=50")])
    assert one_line_error(capsys, code).endswith(
        f"has {TRAIN_IMAGES} images, fewer than one batch of train.batch_size=50 (SCST batches "
        f"count images): lower train.batch_size to at most {TRAIN_IMAGES}")
    assert not run_dir.exists()


def test_a_feature_width_that_is_not_the_models_names_the_setting_that_fixes_it(synth, tmp_path,
                                                                               capsys):
    run_dir = tmp_path / "run"
    code = train(synth, run_dir, "model.grid_dim=1024")
    assert one_line_error(capsys, code) == (
        f"{synth / 'grid.hdf5'} holds {GRID_DIM}-wide features but model.grid_dim=1024: set "
        f"model.grid_dim={GRID_DIM}")
    code = train(synth, run_dir, "model.region_dim=2048")
    assert one_line_error(capsys, code).endswith(f"set model.region_dim={REGION_DIM}")
    assert not run_dir.exists()

    stopped = stopped_run(synth, tmp_path / "stopped")        # the model is the run's now
    capsys.readouterr()
    code = main(["train", "--resume", str(stopped), "train.max_steps=4",
                 f"data.grid_features={synth / 'region.hdf5'}"])
    assert one_line_error(capsys, code) == (
        f"{synth / 'region.hdf5'} holds {REGION_DIM}-wide features but model.grid_dim={GRID_DIM}: "
        f"the model (from {stopped / rundir.LAST}) needs features made like those it was trained on")


def test_a_data_error_in_a_loader_worker_is_raised_as_itself(synth):
    split = load_splits(synth, ["val"])["val"]
    store = FeatureStore(synth / "grid.hdf5", synth / "region.hdf5", grid_dim=GRID_DIM + 1,
                         region_dim=REGION_DIM)
    loader = make_loader(ImageReferences(split, store), 4, num_workers=1)
    with pytest.raises(DataError) as raised:
        next(iter(loader))
    message = str(raised.value)
    assert "\n" not in message and "Caught" not in message and "worker" not in message
    assert message.endswith(f"features have shape [64, {GRID_DIM}], expected [n, {GRID_DIM + 1}]; "
                            "run `hin data check` to list every problem entry, then re-extract "
                            "those images")


# -- a full disk, and a run folder without a checkpoint -----------------------------------

@pytest.mark.parametrize("room", [0, 1], ids=["no-room", "room-for-the-lock"])
def test_a_full_disk_at_the_start_leaves_a_folder_that_starts_again(synth, tmp_path, capsys,
                                                                   monkeypatch, room):
    run_dir = tmp_path / "run"
    real_fsync, synced = os.fsync, []

    def full_after_room(descriptor):
        synced.append(descriptor)
        if len(synced) > room:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)
    monkeypatch.setattr(os, "fsync", full_after_room)
    code = train(synth, run_dir)
    assert one_line_error(capsys, code) == (
        f"no space left on the device to lock {run_dir} (writing {LOCK_FILE}); nothing was "
        "written there. Free some space and try again" if room == 0 else
        f"no space left on the device writing {run_dir / rundir.CONFIG_FILE}; no config.yaml was "
        "written. Free some space and try again")
    assert list(run_dir.iterdir()) == []           # no 0-byte config.yaml, no lock
    monkeypatch.undo()
    assert train(synth, run_dir, "train.max_steps=2") == 0
    assert (run_dir / rundir.LAST).is_file()


def test_a_run_that_saved_no_checkpoint_may_be_started_again(synth, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real_write, cut = os.write, []

    def disk_fills_in_the_first_step_record(descriptor, data):
        if cut:
            raise OSError(errno.ENOSPC, "No space left on device")
        if data.startswith(b'{"event": "step"'):
            cut.append(data)
            return real_write(descriptor, data[:9])
        return real_write(descriptor, data)
    monkeypatch.setattr(os, "write", disk_fills_in_the_first_step_record)
    code = train(synth, run_dir)
    assert one_line_error(capsys, code) == (
        f"no space left on the device writing {run_dir / LOG_FILE}; the lines before are intact. "
        "Free some space and try again")
    monkeypatch.undo()
    assert sorted(p.name for p in run_dir.iterdir()) == [rundir.CONFIG_FILE, rundir.DATA_FILE,
                                                         LOG_FILE]
    assert (run_dir / LOG_FILE).read_bytes() == b""     # the partial line was cut back
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert one_line_error(capsys, 2).endswith(
        f"(it holds a run that saved no checkpoint yet: `hin train --config CONFIG "
        f"run_dir={run_dir}` starts it again)")
    assert train(synth, run_dir, "train.max_steps=2") == 0
    assert (f"{run_dir} holds a run that saved no checkpoint (config.yaml, log.jsonl): starting "
            "it again from the beginning") in capsys.readouterr().out
    assert [r["event"] for r in read_log(run_dir)][:2] == ["restart", "step"]
    assert [r["step"] for r in current_history(read_log(run_dir)) if r["event"] == "step"] == [1, 2]


# -- the run folder's lock ----------------------------------------------------------------

HOLD_LOCK = """
import sys
from hin.locks import FolderLock
lock = FolderLock(sys.argv[1], "hin train")
print("locked", flush=True)
if sys.argv[2] == "hold":
    sys.stdin.readline()
    lock.release()
"""


def other_process(folder: Path, how: str) -> subprocess.Popen:
    """A second process that takes `folder`'s lock, then holds it until its stdin closes
    ("hold") or dies at once without releasing it ("die": a kill -9)."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), how],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(SRC)})
    assert child.stdout.readline() == "locked\n"
    return child


def test_a_second_train_or_resume_into_a_locked_run_folder_is_refused(synth, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(synth, run_dir, "train.max_steps=2") == 0
    assert not (run_dir / LOCK_FILE).exists()       # released on exit
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    holder = other_process(run_dir, "hold")
    try:
        capsys.readouterr()
        code = main(["train", "--resume", str(run_dir), "train.max_steps=4"])
        message = one_line_error(capsys, code)
        assert message.startswith(f"{run_dir} is in use by another hin train (pid {holder.pid} on ")
        assert message.endswith(f"wait for it to end or stop it. If it no longer runs, delete "
                                f"{run_dir / LOCK_FILE}")
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        other = other_process(fresh, "hold")
        try:
            assert f"(pid {other.pid} on " in one_line_error(capsys, train(synth, fresh))
        finally:
            other.communicate("")
    finally:
        holder.communicate("")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    assert main(["train", "--resume", str(run_dir), "train.max_steps=4"]) == 0


def test_the_lock_is_held_while_training(synth, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real_loss, answers = loop.Trainer._xe_loss, []

    def loss_and_a_second_start(self, batch):
        if self.progress.step == 1:
            assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
            answers.append(train(synth, run_dir))
        return real_loss(self, batch)
    monkeypatch.setattr(loop.Trainer, "_xe_loss", loss_and_a_second_start)
    assert train(synth, run_dir, "train.max_steps=3") == 0
    assert answers == [2]
    assert f"is in use by another hin train (pid {os.getpid()} " in capsys.readouterr().err


def test_a_stale_lock_of_a_dead_process_is_taken_over(synth, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = other_process(run_dir, "die")
    dead.wait()
    assert (run_dir / LOCK_FILE).is_file()
    assert train(synth, run_dir, "train.max_steps=2") == 0
    assert (f"{run_dir / LOCK_FILE}: removed a stale lock of pid {dead.pid}, which no longer "
            "runs") in capsys.readouterr().out
    assert not (run_dir / LOCK_FILE).exists()


# -- refusals and repairs on --resume -----------------------------------------------------

def stopped_run(synth: Path, run_dir: Path, steps: int = 3) -> Path:
    assert train(synth, run_dir, f"train.max_steps={steps}") == 0
    return run_dir


def test_another_batch_size_mid_epoch_is_refused_and_allowed_at_an_epoch_boundary(synth, tmp_path,
                                                                                 capsys):
    run_dir = stopped_run(synth, tmp_path / "run")
    before = (run_dir / rundir.LAST).read_bytes()
    capsys.readouterr()
    code = main(["train", "--resume", str(run_dir), "train.max_steps=0", "train.batch_size=20"])
    assert one_line_error(capsys, code) == (
        "train.batch_size=20 differs from the run's 10 in the middle of epoch 1 (3 batches "
        "done), whose order was cut with the run's: finish the epoch first (`hin train --resume "
        f"{run_dir} train.epochs=1`), then resume with train.batch_size=20 and train.epochs "
        "above 1")
    assert (run_dir / rundir.LAST).read_bytes() == before
    code = main(["train", "--resume", str(run_dir), "train.max_steps=0", "train.seed=5"])
    assert one_line_error(capsys, code).startswith("train.seed=5 differs from the run's 0 in the "
                                                   "middle of epoch 1")
    assert main(["train", "--resume", str(run_dir), "train.max_steps=0", "train.epochs=1"]) == 0
    assert main(["train", "--resume", str(run_dir), "train.batch_size=20", "train.epochs=2"]) == 0
    progress = checkpoint.load(run_dir / rundir.LAST)[1]["training"]["progress"]
    assert (progress["epoch"], progress["step"]) == (3, 10 + 5)     # epoch 2: 5 batches of 20


def test_another_vocabulary_on_resume_is_refused_naming_the_first_difference(synth, tmp_path,
                                                                           capsys):
    run_dir = stopped_run(synth, tmp_path / "run")
    vocab = Vocabulary.load(synth / "vocab.json").to_dict()
    permuted = dict(vocab, words=[*vocab["words"][:5], vocab["words"][6], vocab["words"][5],
                                  *vocab["words"][7:]])
    (tmp_path / "permuted.json").write_text(json.dumps(permuted))
    code = main(["train", "--resume", str(run_dir), "train.max_steps=4",
                 f"data.vocabulary={tmp_path / 'permuted.json'}"])
    assert one_line_error(capsys, code) == (
        f"the vocabulary {tmp_path / 'permuted.json'} differs from the one recorded in "
        f"{run_dir / rundir.LAST} at entry 5: {vocab['words'][6]!r} instead of "
        f"{vocab['words'][5]!r}; a run keeps the vocabulary it was trained with: point "
        "data.vocabulary at that one (or leave it out)")
    shorter = dict(vocab, words=vocab["words"][:-1], counts=vocab["counts"][:-1])
    (tmp_path / "shorter.json").write_text(json.dumps(shorter))
    code = main(["train", "--resume", str(run_dir), "train.max_steps=4",
                 f"data.vocabulary={tmp_path / 'shorter.json'}"])
    assert f"at entry {len(vocab['words']) - 1}: nothing (it ends there)" in one_line_error(capsys,
                                                                                             code)
    assert checkpoint.load(run_dir / rundir.LAST)[1]["training"]["progress"]["step"] == 3


def test_an_edited_config_yaml_is_refused_saying_which_file_wins(synth, tmp_path, capsys):
    run_dir = stopped_run(synth, tmp_path / "run")
    written = yaml.safe_load((run_dir / rundir.CONFIG_FILE).read_text())
    written["train"]["lr"] = 5e-05
    edited = yaml.safe_dump(written, sort_keys=False)
    (run_dir / rundir.CONFIG_FILE).write_text(edited)
    capsys.readouterr()
    code = main(["train", "--resume", str(run_dir), "train.max_steps=4"])
    assert one_line_error(capsys, code) == (
        f"{run_dir / rundir.CONFIG_FILE} was edited (train.lr: 5e-05 there, 0.0005 in "
        f"{run_dir / rundir.LAST}); a resumed run takes its settings from last.pt (and rewrites "
        f"config.yaml). To use the edit: `hin train --resume {run_dir} train.max_steps=4 "
        f"train.lr=5e-05`; to drop it, delete {run_dir / rundir.CONFIG_FILE}")
    assert (run_dir / rundir.CONFIG_FILE).read_text() == edited
    assert main(["train", "--resume", str(run_dir), "train.max_steps=4", "train.lr=5e-05"]) == 0
    assert checkpoint.load(run_dir / rundir.LAST)[1]["config"]["train"]["lr"] == 5e-05


def test_an_old_run_with_train_bf16_resumes_as_train_precision(synth, tmp_path, capsys):
    run_dir = stopped_run(synth, tmp_path / "run")
    payload = checkpoint.read_hin(run_dir / rundir.LAST)
    old = payload["extra"]["config"]["train"]
    del old["precision"]
    old["bf16"] = True
    torch.save(payload, run_dir / rundir.LAST)
    (run_dir / rundir.CONFIG_FILE).write_text(yaml.safe_dump(payload["extra"]["config"]))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "train.max_steps=4"]) == 0
    assert (f"{run_dir / rundir.LAST}: train.bf16=true (an older hin's setting) is read as "
            "train.precision=bf16") in capsys.readouterr().out
    config = checkpoint.load(run_dir / rundir.LAST)[1]["config"]["train"]
    assert config["precision"] == "bf16" and "bf16" not in config


def test_an_old_run_with_flat_validation_settings_and_max_len_resumes(synth, tmp_path, capsys):
    """Older hin wrote train.beam_size/max_len (validated in train.precision) and
    model.max_len (the position table): a run and its checkpoints load, with a note."""
    run_dir = stopped_run(synth, tmp_path / "run")
    payload = checkpoint.read_hin(run_dir / rundir.LAST)
    config = payload["extra"]["config"]
    validation = config["train"].pop("validation")
    config["train"].update(beam_size=validation["beam_size"], max_len=validation["max_len"],
                           precision="bf16")
    config["model"]["max_len"] = config["model"].pop("max_positions")
    payload["config"]["max_len"] = payload["config"].pop("max_positions")
    torch.save(payload, run_dir / rundir.LAST)
    (run_dir / rundir.CONFIG_FILE).write_text(yaml.safe_dump(config))
    model, _ = checkpoint.load(run_dir / rundir.LAST)
    assert model.config.max_positions == config["model"]["max_len"]
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "train.max_steps=4"]) == 0
    out = capsys.readouterr().out
    for old, new in (("train.beam_size=2", "train.validation.beam_size=2"),
                     ("train.max_len=8", "train.validation.max_len=8"),
                     (f"model.max_len={model.config.max_positions}",
                      f"model.max_positions={model.config.max_positions}")):
        assert f"{run_dir / rundir.LAST}: {old} (an older hin's setting) is read as {new}" in out
    assert "train.validation.precision=bf16: an older hin validated in the training precision" in out
    resumed = checkpoint.load(run_dir / rundir.LAST)[1]["config"]
    assert resumed["train"]["validation"] == {**validation, "precision": "bf16"}
    assert "beam_size" not in resumed["train"] and "max_len" not in resumed["model"]


def test_a_config_with_an_older_key_names_its_new_place():
    with pytest.raises(ConfigError, match=r"^train.beam_size \(an older hin's setting\) is now "
                                          r"train.validation.beam_size: rename it$"):
        RunConfig.from_dict({"train": {"beam_size": 3}})


def test_a_cut_off_last_log_line_is_repaired_on_resume(synth, tmp_path, capsys):
    run_dir = stopped_run(synth, tmp_path / "run")
    whole = (run_dir / LOG_FILE).read_text()
    with (run_dir / LOG_FILE).open("a") as log:
        log.write('{"event": "step", "sta')          # killed mid-line
    assert read_log(run_dir) == [json.loads(line) for line in whole.splitlines()]
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "train.max_steps=4"]) == 0
    assert (f"{run_dir / LOG_FILE}: dropped a cut-off last line (22 characters) left by an "
            "interrupted write") in capsys.readouterr().out
    text = (run_dir / LOG_FILE).read_text()
    assert text.startswith(whole) and text.endswith("\n")
    assert [r["event"] for r in map(json.loads, text.splitlines())][-2:] == ["step", "stop"]


# -- why a run stopped; SCST's data from --init; small data --------------------------------

def test_every_run_says_why_it_stopped(synth, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(synth, run_dir, "train.max_steps=2") == 0
    assert (f"the run in {run_dir} stopped: it reached train.max_steps=2 (step 2)"
            in capsys.readouterr().out)
    assert main(["train", "--resume", str(run_dir), "train.max_steps=0", "train.epochs=1"]) == 0
    assert (f"the run in {run_dir} stopped: it trained all train.epochs=1 epochs"
            in capsys.readouterr().out)
    assert main(["train", "--resume", str(run_dir), "train.epochs=9", "train.patience=1",
                 "train.min_epochs=1"]) == 0
    out = capsys.readouterr().out
    assert f"the run in {run_dir} stopped: it was stopped by the stopping rule after epoch" in out
    assert "train.patience=1)" in out
    assert [r["reason"] for r in read_log(run_dir) if r["event"] == "stop"] == ["max_steps"]


def test_scst_takes_the_data_settings_of_its_init_checkpoint(synth, xe_best, tmp_path, capsys):
    run_dir = tmp_path / "scst"
    capsys.readouterr()
    code = main(["train", "--config", "small_scst", "--init", str(xe_best), f"run_dir={run_dir}",
                 "train.device=cpu", "train.max_steps=1", "train.validation.beam_size=2", "train.validation.max_len=8",
                 "data.num_workers=1"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert (f"data settings from --init {xe_best} (annotations {synth}, vocabulary "
            f"{synth / 'vocab.json'}); given here and used instead: data.num_workers=1 "
            "(checkpoint: 0)") in out
    data = checkpoint.load(run_dir / rundir.LAST)[1]["config"]["data"]
    assert data == {**checkpoint.load(xe_best)[1]["config"]["data"], "num_workers": 1}


def test_the_small_config_trains_a_small_model(synth, tmp_path):
    run_dir = tmp_path / "small"
    assert main(["train", "--config", "small_xe", *tiny_overrides(synth, run_dir)[:6],
                 f"model.grid_dim={GRID_DIM}", f"model.region_dim={REGION_DIM}",
                 "train.device=cpu", "train.max_steps=1", "train.val_full_metrics=false"]) == 0
    model, extra = checkpoint.load(run_dir / rundir.LAST)
    assert (model.config.num_layers, model.config.d_model) == (2, 256)
    assert extra["config"]["train"]["batch_size"] == 10
