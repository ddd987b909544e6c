"""Pieces of a training run that need no model: the seeded data order and its split across
ranks, RNG capture/restore through a weights_only checkpoint, the JSONL/TensorBoard log and
`hin plot`."""

import importlib.util
import json
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hin.cli import main
from hin.training.plot import best_epoch, current_history, plot_run, stage_starts
from hin.training.runlog import LOG_FILE, RunLog, read_log, scalars
from hin.training.state import capture_rng, restore_rng


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()   # leaves a cached Gaussian in NumPy's state
    state = capture_rng()
    torch.save({"rng": state}, tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    restore_rng(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


class RecordingWriter:
    """Stands in for TensorBoard's SummaryWriter."""

    def __init__(self):
        self.scalars, self.flushes, self.closed = [], 0, False

    def add_scalar(self, tag, scalar_value, global_step):
        self.scalars.append((tag, scalar_value, global_step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


STEP = {"event": "step", "stage": "xe", "epoch": 1, "step": 3, "lr": 1e-4, "loss": 2.5}
EPOCH = {"event": "epoch", "stage": "xe", "epoch": 1, "step": 4, "lr": 1e-4, "train_loss": 2.0,
         "val": {"CIDEr-D": 0.5, "BLEU-4": 0.25}, "best": True}


def test_log_appends_json_lines_and_mirrors_numbers_to_tensorboard(tmp_path):
    writer = RecordingWriter()
    log = RunLog(tmp_path / "run", writer=writer)
    for record in (STEP, EPOCH, {"event": "resume", "step": 4, "epoch": 2}):
        log.write(record)
    log.close()
    assert read_log(tmp_path / "run") == [STEP, EPOCH, {"event": "resume", "step": 4, "epoch": 2}]
    assert writer.scalars == [("xe/lr", 1e-4, 3), ("xe/loss", 2.5, 3), ("xe/lr", 1e-4, 4),
                              ("xe/train_loss", 2.0, 4), ("xe/val/CIDEr-D", 0.5, 4),
                              ("xe/val/BLEU-4", 0.25, 4)]
    assert writer.flushes == 1 and writer.closed


def test_scalars_leave_out_flags_and_missing_values():
    assert scalars({**EPOCH, "train_loss": None}) == {
        "xe/lr": 1e-4, "xe/val/CIDEr-D": 0.5, "xe/val/BLEU-4": 0.25}


def test_reading_a_missing_or_damaged_log_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="is .* a `hin train` run directory"):
        read_log(tmp_path)
    (tmp_path / LOG_FILE).write_text(json.dumps(STEP) + "\n{\"event\": \"st\n")
    with pytest.raises(ValueError, match=r"log.jsonl line 2 is not JSON"):
        read_log(tmp_path)


def test_history_drops_steps_that_a_resume_redid():
    records = [{"event": "step", "step": s} for s in (1, 2, 3)]
    records += [{"event": "resume", "step": 2}, {"event": "step", "step": 3}]
    assert [r["step"] for r in current_history(records)] == [1, 2, 2, 3]
    assert sum(r["event"] == "resume" for r in current_history(records)) == 1


def test_hin_plot_draws_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = RunLog(tmp_path, writer=RecordingWriter())
    for step in range(1, 5):
        log.write({**STEP, "step": step, "loss": 3.0 / step})
    log.write(EPOCH)
    log.write({**STEP, "stage": "scst", "step": 5, "reward": 0.4})
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert f"wrote {png}" in capsys.readouterr().out
    with Image.open(png) as image:
        assert (image.format, image.size) == ("PNG", (800, 1000))
    assert plot_run(tmp_path, tmp_path / "other.png") == tmp_path / "other.png"


def test_hin_plot_checks_its_output_before_drawing(tmp_path, capsys, monkeypatch):
    pyplot = pytest.importorskip("matplotlib.pyplot")
    log = RunLog(tmp_path, writer=RecordingWriter())
    log.write({**STEP, "step": 1, "loss": 3.0})

    def no_drawing(*args, **kwargs):
        raise AssertionError("the output should have been refused before drawing")

    monkeypatch.setattr(pyplot, "subplots", no_drawing)
    assert main(["plot", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"hin plot: error: --out {tmp_path} is a directory")


def test_hin_plot_refuses_a_run_without_steps(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    RunLog(tmp_path, writer=RecordingWriter()).write({"event": "resume", "step": 0, "epoch": 1})
    assert main(["plot", str(tmp_path)]) == 2
    assert "has no logged steps or epochs yet" in capsys.readouterr().err


def test_plot_marks_where_each_stage_starts_and_the_epoch_best_pt_holds():
    records = [{**STEP, "step": 1}, {**EPOCH, "epoch": 1, "step": 2},
               {**EPOCH, "epoch": 2, "step": 4, "best": False}, {"event": "stop", "step": 4},
               {**STEP, "stage": "scst", "step": 5}, {**EPOCH, "stage": "scst", "step": 6}]
    assert stage_starts(records) == [(5, "scst")]
    assert best_epoch(records)["stage"] == "scst"
    assert best_epoch(records[:4])["epoch"] == 1
    assert best_epoch(records[:1]) is None


def test_hin_plot_says_which_directory_has_no_log(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing' / LOG_FILE} does not exist" in capsys.readouterr().err


def test_hin_plot_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(tmp_path)]) == 2
    assert "pip install 'hin-caption[plot]'" in capsys.readouterr().err


def test_a_broken_tensorboard_install_only_turns_the_mirror_off(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())   # "installed"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)         # import fails
    with pytest.warns(UserWarning, match=r"TensorBoard logging is off: tensorboard is "
                                         r"installed but does not import .*"
                                         r"train.tensorboard=false"):
        log = RunLog(tmp_path)
    assert log.writer is None
    log.write(STEP)
    assert read_log(tmp_path) == [STEP]
