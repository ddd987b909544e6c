"""`hin evaluate` end to end on a tiny synthetic set with tiny untrained models."""

from __future__ import annotations

import errno
import hashlib
import json
import os

import pytest
import torch

from hin.checkpoint import load, save
from hin.cli import main
from hin.config import DataConfig, DecodingConfig, HINConfig
from hin.data.coco import load_split
from hin.data.dataset import ImageReferences, collate
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary
from hin.decoding import decode
from hin.evaluate import evaluate
from hin.extract.shapes import GRID_DIM, REGION_DIM
from hin.metrics import collapse_repeats
from hin.model import HIN
from hin.synth import generate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    generate(root / "synth", train=20, val=4, test=6, min_freq=1, progress=False)
    vocab = Vocabulary.load(root / "synth" / "vocab.json")
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = HIN(HINConfig(vocab_size=len(vocab), num_layers=2, d_model=16, num_heads=2,
                              d_ff=32, dropout=0.0, grid_dim=GRID_DIM, region_dim=REGION_DIM))
        checkpoints.append(save(root / f"model{seed}.pt", model))
    data = DataConfig(annotations=str(root / "synth"),
                      grid_features=str(root / "synth" / "grid.hdf5"),
                      region_features=str(root / "synth" / "region.hdf5"),
                      vocabulary=str(root / "synth" / "vocab.json"), num_workers=0)
    return root, data, checkpoints, vocab


def _cli_args(data: DataConfig, checkpoints, split: str, out) -> list[str]:
    return ["evaluate", *(arg for c in checkpoints for arg in ("--checkpoint", str(c))),
            "--split", split, "--beam", "3", "--max-len", "8", "--batch-size", "4",
            "--annotations", data.annotations, "--grid", data.grid_features,
            "--region", data.region_features, "--vocab", data.vocabulary, "--workers", "0",
            "--no-spice", "--out", str(out)]


@pytest.mark.slow
def test_hin_evaluate_ensemble_end_to_end(world, capsys):
    root, data, checkpoints, vocab = world
    out = root / "run"
    assert main(_cli_args(data, checkpoints, "test", out)) == 0
    printed = capsys.readouterr().out
    assert "CIDEr" in printed and "6 images; collapse immediate repeats: on" in printed

    # captions.json holds exactly what beam search over the ensemble decodes.
    split = load_split(data.annotations, "test")
    models = [load(c)[0] for c in checkpoints]
    store = FeatureStore(data.grid_features, data.region_features, grid_dim=GRID_DIM,
                         region_dim=REGION_DIM)
    batch = collate([ImageReferences(split, store)[i]
                     for i in range(len(split.images))])
    sequences, _ = decode(models, batch.grid, batch.region,
                               DecodingConfig(beam_size=3, max_len=8))
    expected = [{"image_id": i, "caption": collapse_repeats(vocab.decode(ids))}
                for i, ids in sorted(zip(batch.image_ids, sequences[:, 0].tolist()))]
    assert json.loads((out / "captions.json").read_text()) == expected

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_images"] == 6
    assert metrics["postprocessing"] == {"collapse_repeats": True}
    assert metrics["decoding"] == {**DecodingConfig(beam_size=3, max_len=8).to_dict(),
                                   "batch_size": 4, "ensemble": 2}
    assert metrics["decoding"]["sample"] is False and metrics["decoding"]["length_penalty"] == 0
    assert [c["sha256"] for c in metrics["checkpoints"]] == [
        hashlib.sha256(c.read_bytes()).hexdigest() for c in checkpoints]
    assert metrics["checkpoints"][0]["config"]["d_model"] == 16
    assert metrics["vocabulary"] == {"source": data.vocabulary, "sha256": vocab.digest(),
                                     "size": len(vocab)}
    assert "vocabulary" not in metrics["data"]
    assert metrics["unavailable"] == {"SPICE": "not requested"}
    assert set(metrics["tools"]) == {"pycocoevalcap", "java"}
    assert set(metrics["versions"]) == {"hin", "torch"}

    # Scoring the written captions again reproduces the numbers.
    assert main(["score", "--results", str(out / "captions.json"), "--annotations",
                 f"{data.annotations}/captions_val2014.json", "--only-results", "--no-spice",
                 "--out", str(root / "rescored.json")]) == 0
    rescored = json.loads((root / "rescored.json").read_text())
    assert rescored["scores"] == pytest.approx(metrics["scores"], abs=1e-12)


def test_images_without_references_get_captions_only(world):
    root, data, checkpoints, _ = world
    result = evaluate(checkpoints[:1], "features", data, decoding=DecodingConfig(beam_size=2, max_len=5),
                      out_dir=root / "server", progress=False, vocab=data.vocabulary)
    assert result.report is None
    assert [path.name for path in result.written] == ["captions.json"]
    assert not (root / "server" / "metrics.json").exists()
    assert len(result.captions) == 30  # every image of the feature files


def test_vocabulary_must_match_the_checkpoint(world, tmp_path):
    root, data, checkpoints, vocab = world
    Vocabulary(vocab.words[:-1], [1] * (len(vocab) - 1)).save(tmp_path / "small.json")
    with pytest.raises(ValueError, match=f"has {len(vocab) - 1} entries but .*model0.pt was "
                                         f"trained with {len(vocab)}"):
        evaluate(checkpoints[:1], "test", data, vocab=tmp_path / "small.json", progress=False)


def test_evaluate_uses_and_records_the_checkpoints_own_vocabulary(world, tmp_path, capsys):
    root, data, checkpoints, vocab = world
    model, _ = load(checkpoints[0])
    recorded = save(tmp_path / "recorded.pt", model, vocabulary=vocab.to_dict())
    words = list(vocab.words)
    words[4], words[5] = words[5], words[4]
    Vocabulary(words, vocab.counts).save(tmp_path / "swapped.json")
    arguments = _cli_args(data, [recorded], "val", tmp_path / "out")
    arguments[arguments.index("--vocab") + 1] = str(tmp_path / "swapped.json")
    assert main(arguments) == 2
    assert capsys.readouterr().err == (
        f"hin evaluate: error: the vocabulary {tmp_path / 'swapped.json'} differs from the one "
        f"recorded in {recorded} at entry 4: {words[4]!r} instead of {words[5]!r}; the recorded "
        "vocabulary is used by default: leave out --vocab\n")
    with pytest.raises(ValueError, match=r"the vocabulary recorded in .*other\.pt differs from "
                                         r"the one recorded in .*recorded\.pt at entry 4"):
        evaluate([recorded, save(tmp_path / "other.pt", model,
                                 vocabulary=Vocabulary(words, vocab.counts).to_dict())],
                 "val", data, progress=False)

    evaluate([recorded], "val", DataConfig(**{**data.to_dict(), "vocabulary": "absent.json"}),
             decoding=DecodingConfig(beam_size=2, max_len=5), out_dir=tmp_path / "out",
             spice=False, progress=False)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["vocabulary"] == {"source": f"recorded in {recorded}",
                                     "sha256": vocab.digest(), "size": len(vocab)}


def test_an_evaluation_into_an_earlier_ones_folder_replaces_both_files_or_neither(
        world, tmp_path, monkeypatch, capsys):
    _, data, checkpoints, _ = world
    out = tmp_path / "eval"
    args = _cli_args(data, checkpoints[:1], "test", out)
    assert main(args) == 0
    first = {name: (out / name).read_bytes() for name in ("captions.json", "metrics.json")}

    real_fsync = os.fsync

    def disk_full_at_metrics_json(descriptor):     # after captions.json was written in full
        if ".metrics.json." in os.readlink(f"/proc/self/fd/{descriptor}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)
    monkeypatch.setattr(os, "fsync", disk_full_at_metrics_json)
    capsys.readouterr()
    assert main([*args, "--beam", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"hin evaluate: error: no space left on the device writing {out / 'metrics.json'}; none "
        "of captions.json, metrics.json was replaced. Free some space and try again")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first     # no temporary left

    assert main(_cli_args(data, checkpoints[:1], "features", out)) == 0   # no references
    assert sorted(p.name for p in out.iterdir()) == ["captions.json"]     # no stale metrics
    assert len(json.loads((out / "captions.json").read_text())) == 20 + 4 + 6   # every image
