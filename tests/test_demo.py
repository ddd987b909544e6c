"""`hin demo`: it removes only what it wrote itself, and Ctrl-C/SIGTERM end it with one line and
exit 130 (training saves first), never a traceback."""

from __future__ import annotations

import os
import signal

import pytest
import yaml

from hin import demo
from hin.cli import main
from hin.errors import UsageError
from hin.extract.shapes import GRID_DIM, REGION_DIM
from hin.synth import generate
from hin.training import loop, rundir


def test_a_runs_folder_with_other_files_is_refused_and_left_alone(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "xe").mkdir(parents=True)
    (runs / "notes.txt").write_text("mine")
    (runs / "xe" / "best.pt").write_text("my own run")
    assert main(["demo", "--data", str(tmp_path / "data"), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hin demo: error: --runs {runs} holds files the demo did not write "
                          "(notes.txt, xe)") and "--force" in err and "\n" not in err
    assert (runs / "notes.txt").read_text() == "mine"
    assert (runs / "xe" / "best.pt").read_text() == "my own run"
    assert not (tmp_path / "data").exists()        # refused before any work


def test_the_demo_replaces_only_its_own_subfolders(tmp_path):
    runs = tmp_path / "runs"
    demo.prepare_runs(runs)                                     # a new folder: marked as the demo's
    assert sorted(path.name for path in runs.iterdir()) == [demo.MARKER]
    for name in demo.OWN_ENTRIES:
        (runs / name).mkdir()
        (runs / name / "old.pt").write_text("previous demo")
    demo.prepare_runs(runs)                                     # the next demo run
    assert sorted(path.name for path in runs.iterdir()) == [demo.MARKER]

    (runs / "xe").mkdir()
    (runs / "keep.txt").write_text("added by the user")
    with pytest.raises(UsageError, match=r"holds files the demo did not write \(keep\.txt\)"):
        demo.prepare_runs(runs)
    demo.prepare_runs(runs, force=True)
    assert sorted(path.name for path in runs.iterdir()) == [demo.MARKER, "keep.txt"]
    (runs / demo.MARKER).unlink()
    (runs / "keep.txt").unlink()
    demo.prepare_runs(runs)                                     # an empty folder is fine too


def test_runs_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        demo.prepare_runs(tmp_path / "runs")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """A 20-image synthetic set and a folder of demo configs for a one-layer HIN."""
    root = tmp_path_factory.mktemp("demo")
    generate(root / "data", train=20, val=4, test=4, min_freq=1, progress=False)
    (root / "configs").mkdir()
    (root / "configs" / "synth_xe.yaml").write_text(yaml.safe_dump({
        "model": {"num_layers": 1, "d_model": 16, "num_heads": 2, "d_ff": 32,
                  "grid_dim": GRID_DIM, "region_dim": REGION_DIM},
        "data": {"max_regions": 4, "num_workers": 0},
        "train": {"stage": "xe", "batch_size": 10, "val_full_metrics": False, "device": "cpu"}}))
    return root / "data", root / "configs"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_demo_training_saves_and_ends_with_one_line(small_demo, tmp_path,
                                                                    monkeypatch, capsys, signum):
    real_loss = loop.Trainer._xe_loss

    def loss_then_signal(self, batch):
        if self.progress.step == 1:
            os.kill(os.getpid(), signum)
        return real_loss(self, batch)
    monkeypatch.setattr(loop.Trainer, "_xe_loss", loss_then_signal)
    handler_before = signal.getsignal(signal.SIGTERM)
    runs = tmp_path / "runs"
    data, configs = small_demo
    assert main(["demo", "--data", str(data), "--runs", str(runs), "--configs", str(configs)]) == 130
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith("hin demo: interrupted during training: ")
    assert f"hin train --resume {runs / 'xe'}" in last
    assert (runs / "xe" / rundir.LAST).is_file()
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_sigterm_outside_training_ends_with_one_line(tmp_path, monkeypatch, capsys):
    def generate_then_terminated(out, **options):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the demo")
    monkeypatch.setattr(demo, "generate", generate_then_terminated)
    assert main(["demo", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "hin demo: interrupted; run `hin demo` again to start over"
