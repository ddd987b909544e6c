"""The "your own pictures and captions" recipe (docs/training.md), end to end through the `hin`
command with tiny random CLIP and DETR models: pictures -> dataset JSON -> features ->
vocabulary -> small_xe -> small_scst -> captioning a new picture with the checkpoint alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.extract_models import CLIP_HIDDEN, DETR_D_MODEL, write_pictures, write_tiny_clip, write_tiny_detr
from hin.cli import main

pytest.importorskip("transformers")

SPLITS = {1: "train", 2: "train", 3: "train", 4: "train", 5: "restval", 6: "val", 7: "val",
          8: "test"}
CAPTIONS = ["a red kite over a beach", "a dog on the grass", "two cats on a bed"]


@pytest.mark.slow
def test_own_pictures_and_captions_recipe(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    pictures = write_pictures(mine / "pictures", {f"{i}.png": (40 + i, 48) for i in SPLITS})
    dataset = {"images": [{"cocoid": i, "filename": f"{i}.png", "split": split,
                           "sentences": [{"raw": CAPTIONS[(i + k) % 3]} for k in range(2)]}
                          for i, split in SPLITS.items()]}
    (mine / "dataset.json").write_text(json.dumps(dataset))
    clip, detr = write_tiny_clip(tmp_path / "clip"), write_tiny_detr(tmp_path / "detr")

    run = ["--workers", "0", "--device", "cpu"]
    assert main(["extract", "grid", "--images", str(pictures), "--out", str(mine / "grid.h5"),
                 "--model", str(clip), *run]) == 0
    assert main(["extract", "regions", "--images", str(pictures), "--out",
                 str(mine / "region.h5"), "--model", str(detr), "--threshold", "0",
                 "--max-regions", "4", *run]) == 0
    monkeypatch.chdir(tmp_path)          # the recipe's paths are relative: mine/..., runs/...
    assert main(["data", "check", "--annotations", "mine/dataset.json", "--grid", "mine/grid.h5",
                 "--region", "mine/region.h5", "--grid-dim", str(CLIP_HIDDEN),
                 "--region-dim", str(DETR_D_MODEL)]) == 0
    assert main(["data", "vocab", "--annotations", "mine/dataset.json", "--out", "mine/vocab.json",
                 "--min-freq", "1"]) == 0
    capsys.readouterr()

    tiny = [f"model.grid_dim={CLIP_HIDDEN}", f"model.region_dim={DETR_D_MODEL}",
            "model.num_layers=1", "model.d_model=32", "model.num_heads=4", "model.d_ff=64",
            "data.max_regions=4", "train.val_batch_size=5", "train.epochs=1",
            "train.val_full_metrics=false", "train.validation.beam_size=2", "train.validation.max_len=8",
            "train.device=cpu", "train.tensorboard=false"]
    assert main(["train", "--config", "small_xe", *tiny, "train.batch_size=5"]) == 0
    assert f"best checkpoint: {Path('runs/small_xe/best.pt').resolve()}\n" in capsys.readouterr().out
    scst = [key for key in tiny if not key.startswith(("model.", "data."))]
    assert main(["train", "--config", "small_scst", "--init", "runs/small_xe/best.pt", *scst,
                 "train.batch_size=2"]) == 0
    best = "runs/small_scst/best.pt"
    assert f"best checkpoint: {Path(best).resolve()}\n" in capsys.readouterr().out

    # The checkpoint reruns the extractors its features came from: captioning the picture file
    # gives exactly what captioning its features, extracted by hand, gives.
    write_pictures(tmp_path / "new", {"new_9.jpg": (50, 60)})
    assert main(["caption", "new/new_9.jpg", "--checkpoint", best, "--json"]) == 0
    [from_picture] = json.loads(capsys.readouterr().out)
    assert main(["extract", "grid", "--images", "new", "--out", "new/grid.h5", "--model", str(clip),
                 *run]) == 0
    assert main(["extract", "regions", "--images", "new", "--out", "new/region.h5", "--model",
                 str(detr), "--threshold", "0", "--max-regions", "4", *run]) == 0
    capsys.readouterr()
    assert main(["caption", "--checkpoint", best, "--grid", "new/grid.h5", "--region",
                 "new/region.h5", "--ids", "9", "--json"]) == 0
    [from_features] = json.loads(capsys.readouterr().out)
    assert from_picture["image"] == "new/new_9.jpg"
    assert from_picture["captions"] == from_features["captions"]
    assert from_picture["captions"][0]["caption"]
