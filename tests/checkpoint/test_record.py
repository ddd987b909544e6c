"""The checkpoint record: typed, versioned, older files still read; opened for decoding in one
read; and features from another extraction refused wherever they meet a model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import hin.checkpoint
from helpers.tiny import tiny_model
from helpers.training_runs import TRAIN_IMAGES, tiny_overrides
from hin.checkpoint import save
from hin.checkpoint.opening import open_checkpoint, open_for_decoding
from hin.checkpoint.record import (
    REFERENCE,
    TRAINED,
    UNKNOWN,
    CheckpointRecord,
    RecordError,
)
from hin.cli import main
from hin.data.vocab import Vocabulary
from hin.synth import generate


def test_the_record_round_trips_and_older_files_still_read():
    record = CheckpointRecord(origin=REFERENCE, vocabulary={"words": ["a"]},
                              features={"grid": {"extractor": "clip-grid", "tokens": 256}},
                              layout={"grid": {"tokens": 256, "dim": 1024}},
                              source={"file": "HIN_best_test.pth", "heads": 8})
    saved = record.to_dict()
    assert saved["record_version"] == 1 and saved["origin"] == REFERENCE
    assert "training" not in saved and "data" not in saved       # nothing recorded: not written
    assert CheckpointRecord.from_dict(saved) == record
    # written before the record had a version: origin told from what the file holds
    assert CheckpointRecord.from_dict({"config": {"data": {"max_regions": 4}}}).origin == TRAINED
    assert CheckpointRecord.from_dict({"config": {"data": {"max_regions": 4}}}).max_regions == 4
    assert CheckpointRecord.from_dict({}).origin == UNKNOWN
    with pytest.raises(RecordError, match="record version 2; this hin reads up to 1"):
        CheckpointRecord.from_dict({"record_version": 2})
    with pytest.raises(RecordError, match="origin 'elsewhere'"):
        CheckpointRecord(origin="elsewhere")


def test_opening_reads_the_file_once_for_weights_and_sha256(tmp_path, monkeypatch):
    vocab = Vocabulary(["<unk>", "<pad>", "<bos>", "<eos>", *(f"w{i}" for i in range(16))], [0] * 20)
    path = save(tmp_path / "m.pt", tiny_model(), CheckpointRecord(
        origin=TRAINED, vocabulary=vocab.to_dict()))
    reads = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or original(self))
    monkeypatch.setattr(hin.checkpoint, "sha256", lambda path: pytest.fail("read twice"))
    opened = open_for_decoding([path], "cpu")
    assert [read for read in reads if read == path] == [path]
    assert opened.members[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert opened.members[0].record.origin == TRAINED and opened.vocab.words == vocab.words
    assert opened.members[0].identity()["sha256"] == opened.members[0].sha256


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run on the synthetic world (8 x 8 = 64 grid tokens), and a grid
    file of another extraction: 16 x 16 = 256 tokens of the same width."""
    root = tmp_path_factory.mktemp("trained")
    synth = root / "synth"
    generate(synth, seed=0, train=TRAIN_IMAGES, val=10, test=10, min_freq=1, progress=False)
    run_dir = root / "run"
    assert main(["train", "--config", "synth_xe",
                 *tiny_overrides(synth, run_dir, "train.epochs=1")]) == 0
    finer = root / "grid16.hdf5"
    shutil.copy(synth / "grid.hdf5", finer)
    with h5py.File(finer, "r+") as handle:
        for name in [n for n in handle if n.endswith("_features")]:
            values = handle[name][()]
            del handle[name]
            handle[name] = np.repeat(values, 4, axis=0)
        handle.attrs.update({"hin_grid_rows": 16, "hin_grid_cols": 16, "hin_tokens": 256})
    return synth, run_dir / "best.pt", finer


def test_training_records_its_extractors_and_layout(trained):
    synth, best, _ = trained
    record = open_checkpoint(best).record
    assert record.origin == TRAINED and record.version == 1
    assert record.features["grid"]["extractor"] == "synth-grid"
    assert record.features["region"]["extractor"] == "synth-regions"
    assert record.layout["grid"]["tokens"] == 64
    assert record.notes() == []


def one_line(capsys, command: str) -> str:
    """The error line a refused command ends with (progress bars may come before it)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith(f"hin {command}: error: ")
    return line


def test_a_grid_file_of_another_extraction_is_refused_where_it_meets_the_model(
        trained, tmp_path, capsys):
    synth, best, finer = trained
    region = str(synth / "region.hdf5")
    assert main(["caption", "--checkpoint", str(best), "--grid", str(finer), "--region", region,
                 "--ids", "1", "--device", "cpu"]) == 2
    error = one_line(capsys, "caption")
    assert f"--grid {finer} holds grid features of another extraction than {best}" in error
    assert "tokens 256 (trained on 64)" in error and "grid_rows 16 (trained on 8)" in error
    assert main(["evaluate", "--checkpoint", str(best), "--split", "test", "--annotations",
                 str(synth), "--grid", str(finer), "--region", region, "--device", "cpu"]) == 2
    assert "tokens 256 (trained on 64)" in one_line(capsys, "evaluate")
    assert main(["explain", "--checkpoint", str(best), "--grid", str(finer), "--region", region,
                 "--ids", "1", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "tokens 256 (trained on 64)" in one_line(capsys, "explain")
    assert main(["data", "check", "--annotations", str(synth), "--grid", str(finer), "--region",
                 region, "--checkpoint", str(best), "--shapes-only"]) == 2
    assert "tokens 256 (trained on 64)" in one_line(capsys, "data")
    assert main(["data", "check", "--annotations", str(synth), "--grid", str(synth / "grid.hdf5"),
                 "--region", region, "--checkpoint", str(best), "--shapes-only"]) == 0
    assert main(["train", "--config", "synth_scst", "--init", str(best),
                 *tiny_overrides(synth, tmp_path / "scst", f"data.grid_features={finer}")]) == 2
    assert f"data.grid_features {finer} holds grid features of another extraction than --init" \
        in one_line(capsys, "train")


def test_an_ensemble_names_the_member_whose_features_differ(trained, tmp_path, capsys):
    synth, best, finer = trained
    model, extra = hin.checkpoint.load(best)
    record = CheckpointRecord.from_dict(extra)
    other = save(tmp_path / "fine.pt", model, CheckpointRecord(
        origin=TRAINED, config=record.config, vocabulary=record.vocabulary,
        features={"grid": {**record.features["grid"], "grid_rows": 16, "grid_cols": 16,
                           "tokens": 256}, "region": record.features["region"]},
        layout={"grid": {"tokens": 256, "dim": record.layout["grid"]["dim"]}}))
    assert main(["evaluate", "--checkpoint", str(other), "--checkpoint", str(best), "--split", "test",
                 "--annotations", str(synth), "--grid", str(finer), "--region",
                 str(synth / "region.hdf5"), "--device", "cpu"]) == 2
    assert f"than ensemble member 2 ({best}) was trained on" in one_line(capsys, "evaluate")


def test_resuming_from_a_last_pt_without_training_state_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    save(run_dir / "last.pt", tiny_model(), CheckpointRecord(origin=TRAINED))
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "last.pt holds no training state (it was not written by `hin train`)" \
        in one_line(capsys, "train")


def test_array_attributes_compare_by_value():
    from hin.checkpoint.record import feature_differences

    record = CheckpointRecord(features={"region": {"extractor": "x", "classes": [1, 2, 3]}})
    assert feature_differences(record, "region", {"classes": np.array([1, 2, 3])}, {}) == []
    assert feature_differences(record, "region", {"classes": np.array([1, 2])}, {}) \
        == ["classes array([1, 2]) (trained on [1, 2, 3])"]
