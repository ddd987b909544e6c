"""The authors' checkpoint usable everywhere: a reference-format file and its vocab.pkl go
through `hin import-checkpoint` into caption, explain (--paper too), evaluate and serve; the
head count is read from saved arguments or checked against the reference's own captions; the
picture extractors recorded at import are rebuilt from the record."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from helpers.data_files import write_coco
from helpers.reference_checkpoints import (
    REFERENCE_WORDS,
    save_like_reference_training,
    write_legacy_vocab,
    write_reference_outputs,
)
from hin.checkpoint.opening import open_checkpoint
from hin.checkpoint.record import REFERENCE, REFERENCE_SELECTION_NOTE
from hin.cli import main
from hin.extract.registry import EXTRACTORS, register_extractor

# the golden model reads 16 x 16 = 256 grid tokens of 1024 values and regions of 2048
SYNTH = ["grid_dim=1024", "region_dim=2048", "grid_side=16", "canvas=128"]


@pytest.fixture(scope="module")
def imported(golden, tmp_path_factory):
    """reference .pth + vocab.pkl -> OUT.pt with its words and (synthetic) picture extractors."""
    root = tmp_path_factory.mktemp("imported")
    reference = save_like_reference_training(dict(golden["state_dicts"][0]), root / "HIN_best_test.pth")
    vocab = write_legacy_vocab(REFERENCE_WORDS, root / "vocab.pkl")
    out = root / "hin.pt"
    assert main(["import-checkpoint", str(reference), str(out), "--heads", "4", "--vocab", str(vocab),
                 "--grid-extractor", "synth-grid", *SYNTH,
                 "--region-extractor", "synth-regions", *SYNTH]) == 0
    grid, region, captions = write_reference_outputs(golden, root)
    picture = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(picture).rectangle((20, 20, 60, 70), fill=(200, 30, 30))
    picture.save(root / "photo.png")
    return {"root": root, "reference": reference, "vocab": vocab, "out": out, "grid": grid,
            "region": region, "captions": captions, "photo": root / "photo.png"}


def test_import_embeds_the_vocabulary_and_records_origin_and_extractors(imported, golden):
    opened = open_checkpoint(imported["out"])
    assert opened.record.origin == REFERENCE
    assert opened.record.vocabulary["words"] == REFERENCE_WORDS
    assert opened.record.features["grid"]["extractor"] == "synth-grid"
    assert opened.record.features["region"]["extractor"] == "synth-regions"
    assert opened.record.source["heads"] == 4 and opened.record.source["heads_from"] == "--heads"


def test_caption_features_and_pictures_with_no_manual_python(imported, golden, capsys):
    assert main(["caption", "--checkpoint", str(imported["out"]), "--grid", str(imported["grid"]),
                 "--region", str(imported["region"]), "--ids", "1", "2", "--beam", "3",
                 "--keep-repeats", "--json", "--device", "cpu"]) == 0
    answers = json.loads(capsys.readouterr().out)
    expected = json.loads(imported["captions"].read_text())
    assert [a["captions"][0]["caption"] for a in answers] == [e["caption"] for e in expected]
    assert main(["caption", str(imported["photo"]), "--checkpoint", str(imported["out"]),
                 "--device", "cpu"]) == 0
    assert "photo.png" in capsys.readouterr().out


def test_explain_and_the_paper_figure(imported, tmp_path, capsys):
    base = shutil.copy(imported["out"], tmp_path / "base.pt")
    out = tmp_path / "figures"
    assert main(["explain", str(imported["photo"]), "--compare", str(base), str(imported["out"]),
                 "--paper", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "paper_figure.pdf").is_file() and (out / "index.html").is_file()
    assert main(["explain", "--checkpoint", str(imported["out"]), "--grid", str(imported["grid"]),
                 "--region", str(imported["region"]), "--ids", "1", "--out", str(tmp_path / "f"),
                 "--device", "cpu"]) == 0


def test_evaluate_notes_that_the_reference_picked_its_checkpoint_on_test(imported, tmp_path, capsys):
    annotations, as_val = tmp_path / "coco", tmp_path / "coco_val"   # splits must be disjoint
    for folder, split in ((annotations, "test"), (as_val, "dev")):
        write_coco(folder, {1: ["a man on a car", "a dog"], 2: ["a tree", "two cars"]},
                   val_images={1, 2}, split_annotations={"train": [], "dev": [], "test": [],
                                                         split: [1, 2, 3, 4]})
    assert main(["evaluate", "--checkpoint", str(imported["out"]), "--split", "test",
                 "--annotations", str(annotations), "--grid", str(imported["grid"]),
                 "--region", str(imported["region"]), "--no-spice", "--device", "cpu",
                 "--out", str(tmp_path / "eval")]) == 0
    assert REFERENCE_SELECTION_NOTE in capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["notes"] == [REFERENCE_SELECTION_NOTE]
    assert metrics["checkpoints"][0]["origin"] == REFERENCE
    assert main(["evaluate", "--checkpoint", str(imported["out"]), "--split", "val",
                 "--annotations", str(as_val), "--grid", str(imported["grid"]),
                 "--region", str(imported["region"]), "--no-spice", "--device", "cpu"]) == 0
    assert "optimistic" not in capsys.readouterr().err      # chosen on test, not on val


def test_serve_answers_with_the_imported_checkpoint(imported):
    from fastapi.testclient import TestClient

    from hin.serve import create_app
    from hin.serve.settings import ServeSettings

    settings = ServeSettings(imported["out"], device="cpu", allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/info").json()
        assert info["can_caption"] and info["model"]["origin"] == REFERENCE
        answer = client.post("/v1/captions", content=imported["photo"].read_bytes(),
                             headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == info["model"]
        assert answer.json()["captions"][0]["caption"]


def test_a_checkpoint_without_words_decodes_with_vocab_everywhere(imported, golden, tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    assert main(["import-checkpoint", str(imported["reference"]), str(bare), "--heads", "4",
                 "--grid-extractor", "synth-grid", *SYNTH,
                 "--region-extractor", "synth-regions", *SYNTH]) == 0
    picture = str(imported["photo"])
    assert main(["explain", picture, "--checkpoint", str(bare), "--out", str(tmp_path / "x"),
                 "--device", "cpu"]) == 2
    assert "carries no vocabulary" in capsys.readouterr().err
    assert main(["explain", picture, "--checkpoint", str(bare), "--out", str(tmp_path / "x"),
                 "--device", "cpu", "--vocab", str(imported["vocab"])]) == 0
    assert main(["caption", picture, "--checkpoint", str(bare), "--device", "cpu",
                 "--vocab", str(imported["vocab"])]) == 0
    from hin.serve.service import CaptionService
    from hin.serve.settings import ServeSettings

    service = CaptionService(ServeSettings(bare, device="cpu", vocab=imported["vocab"]))
    try:
        assert service.captioner.vocab.words == REFERENCE_WORDS
    finally:
        service.close()


def test_a_wrong_head_count_is_caught_by_verify(imported, tmp_path, capsys):
    verify = [str(imported["grid"]), str(imported["region"]), str(imported["captions"])]
    common = [str(imported["reference"]), "--vocab", str(imported["vocab"]), "--verify", *verify,
              "--verify-beam", "3"]
    wrong = tmp_path / "wrong.pt"
    assert main(["import-checkpoint", common[0], str(wrong), "--heads", "8", *common[1:]]) == 2
    error = capsys.readouterr().err
    assert "--heads 8 does not fit" in error and "import it again with --heads 4" in error
    assert len(error.strip().splitlines()) == 1 and not wrong.exists()
    right = tmp_path / "right.pt"
    assert main(["import-checkpoint", common[0], str(right), "--heads", "4", *common[1:]]) == 0
    assert "verified --heads 4: hin's beam search reproduces 2 of the reference's 2" in capsys.readouterr().out
    assert "verified" in open_checkpoint(right).record.source["heads_from"]


def test_an_unverified_head_count_is_warned_about(imported, tmp_path, capsys):
    assert main(["import-checkpoint", str(imported["reference"]), str(tmp_path / "o.pt"),
                 "--heads", "8"]) == 0
    assert "a wrong count gives a wrong model" in capsys.readouterr().err


def test_saved_arguments_give_the_head_count(golden, tmp_path, capsys):
    reference = tmp_path / "with_args.pth"
    torch.save({"state_dict": dict(golden["state_dicts"][0]),
                "args": argparse.Namespace(head=4, batch_size=20)}, reference)
    assert main(["import-checkpoint", str(reference), str(tmp_path / "a.pt")]) == 0
    assert "4 heads from the reference's saved arguments" in capsys.readouterr().out
    assert main(["import-checkpoint", str(reference), str(tmp_path / "b.pt"), "--heads", "8"]) == 2
    assert "--heads 8 contradicts the 4 heads" in capsys.readouterr().err
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": dict(golden["state_dicts"][0])}, bare)
    assert main(["import-checkpoint", str(bare), str(tmp_path / "c.pt")]) == 2
    assert "does not record its head count" in capsys.readouterr().err


class WeightedGrid:
    """A grid extractor that needs a weights file, as VinVL's does (`weights=PATH`)."""

    kind = "grid"
    feature_dim = 1024

    def __init__(self, weights: str, device: str = "auto", precision: str = "fp32") -> None:
        self.weights = Path(weights)
        self.scale = float(np.load(self.weights))
        self.preprocess = np.asarray

    @classmethod
    def from_attributes(cls, recorded, device="auto", precision="fp32"):
        return cls(recorded["weights"], device, precision)

    def attributes(self):
        return {"extractor": self.name, "kind": self.kind, "feature_dim": self.feature_dim,
                "tokens": 4}

    def __call__(self, prepared):
        return [{"features": np.full((4, 1024), self.scale, np.float32)} for _ in prepared]


@pytest.fixture
def weighted_grid():
    """WeightedGrid registered for one test (the registry is the process's)."""
    register_extractor("test-weighted-grid")(WeightedGrid)
    yield
    del EXTRACTORS["test-weighted-grid"]


def _import_with_weighted_grid(imported, tmp_path):
    """The reference checkpoint imported with a grid extractor that records a weights file."""
    weights = tmp_path / "weights.npy"
    np.save(weights, np.float32(0.5))
    out = tmp_path / "weighted.pt"
    assert main(["import-checkpoint", str(imported["reference"]), str(out), "--heads", "4",
                 "--vocab", str(imported["vocab"]), "--grid-extractor", "test-weighted-grid",
                 f"weights={weights}", "--region-extractor", "synth-regions", *SYNTH]) == 0
    return out, weights


def test_recorded_extractor_weights_missing_at_run_time_say_where(imported, tmp_path, capsys,
                                                                  weighted_grid):
    out, weights = _import_with_weighted_grid(imported, tmp_path)
    assert open_checkpoint(out).record.features["grid"]["weights"] == str(weights.resolve())
    capsys.readouterr()
    moved = shutil.move(weights, tmp_path / "elsewhere.npy")
    picture = str(imported["photo"])
    assert main(["caption", picture, "--checkpoint", str(out), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"needs its weights file {weights.resolve()}, which is not there" in error
    assert "--extractor-weights grid=PATH" in error
    assert main(["caption", picture, "--checkpoint", str(out), "--device", "cpu",
                 "--extractor-weights", f"grid={moved}"]) == 0


def test_import_refuses_what_does_not_fit_the_model(imported, tmp_path, capsys):
    reference, out = str(imported["reference"]), str(tmp_path / "o.pt")
    short = write_legacy_vocab(REFERENCE_WORDS[:20], tmp_path / "short.pkl")
    assert main(["import-checkpoint", reference, out, "--heads", "4", "--vocab", str(short)]) == 2
    assert "has 20 words but" in capsys.readouterr().err
    assert main(["import-checkpoint", reference, out, "--heads", "4", "--verify",
                 str(imported["grid"]), str(imported["region"]), str(imported["captions"])]) == 2
    assert "give the vocabulary they were decoded with (--vocab vocab.pkl)" in capsys.readouterr().err
    assert main(["import-checkpoint", reference, out, "--heads", "4",
                 "--grid-extractor", "synth-grid"]) == 2
    assert "--grid-extractor synth-grid makes grid features of size" in capsys.readouterr().err
    assert main(["import-checkpoint", reference, out, "--heads", "4",
                 "--region-extractor", "synth-regions", "region_dim"]) == 2
    assert "options are KEY=VALUE, got 'region_dim'" in capsys.readouterr().err
    assert not Path(out).exists()
    assert main(["import-checkpoint", reference, out, "--heads", "4", "--vocab",
                 str(imported["vocab"])]) == 0
    capsys.readouterr()
    assert main(["caption", str(imported["photo"]), "--checkpoint", out, "--device", "cpu"]) == 2
    assert "imported without the grid extractor its features came from: import it again with " \
        "`hin import-checkpoint ... --grid-extractor NAME" in capsys.readouterr().err


def test_serve_says_at_start_why_pictures_cannot_be_captioned(imported, tmp_path, capsys, monkeypatch,
                                                              weighted_grid):
    import uvicorn

    out, weights = _import_with_weighted_grid(imported, tmp_path)
    weights.unlink()
    capsys.readouterr()
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    assert main(["serve", "--checkpoint", str(out), "--port", "0", "--device", "cpu"]) == 0
    assert ("hin serve: warning: pictures cannot be captioned: the grid extractor "
            "'test-weighted-grid' needs its weights file") in capsys.readouterr().err
    assert main(["caption", str(imported["photo"]), "--checkpoint", str(out),
                 "--extractor-weights", "depth=x.npy"]) == 2
    assert "--extractor-weights takes grid=PATH or region=PATH, got 'depth=x.npy'" \
        in capsys.readouterr().err
