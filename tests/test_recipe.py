"""The "your own pictures and captions" recipe (docs/training.md), end to end through the `hin` command
with tiny random CLIP and DETR models: pictures -> dataset JSON -> features -> vocabulary ->
training -> captioning a new picture with the checkpoint alone."""

from __future__ import annotations

import json

import pytest

from extract_models import CLIP_HIDDEN, DETR_D_MODEL, write_pictures, write_tiny_clip, write_tiny_detr
from hin.cli import main

pytest.importorskip("transformers")

SPLITS = {1: "train", 2: "train", 3: "train", 4: "train", 5: "restval", 6: "val", 7: "val",
          8: "test"}
CAPTIONS = ["a red kite over a beach", "a dog on the grass", "two cats on a bed"]


@pytest.mark.slow
def test_own_pictures_and_captions_recipe(tmp_path, capsys):
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
    data = [f"data.annotations={mine / 'dataset.json'}", f"data.grid_features={mine / 'grid.h5'}",
            f"data.region_features={mine / 'region.h5'}", f"data.vocabulary={mine / 'vocab.json'}"]
    assert main(["data", "check", "--annotations", str(mine / "dataset.json"), "--grid",
                 str(mine / "grid.h5"), "--region", str(mine / "region.h5"),
                 "--grid-dim", str(CLIP_HIDDEN), "--region-dim", str(DETR_D_MODEL)]) == 0
    assert main(["data", "vocab", "--annotations", str(mine / "dataset.json"), "--out",
                 str(mine / "vocab.json"), "--min-freq", "1"]) == 0
    capsys.readouterr()

    assert main(["train", "--config", "coco_xe", f"run_dir={tmp_path / 'runs' / 'mine_xe'}", *data,
                 f"model.grid_dim={CLIP_HIDDEN}", f"model.region_dim={DETR_D_MODEL}",
                 "model.num_layers=1", "model.d_model=32", "model.num_heads=4", "model.d_ff=64",
                 "data.max_regions=4", "data.num_workers=0", "train.batch_size=5",
                 "train.val_batch_size=5", "train.epochs=1", "train.val_full_metrics=false",
                 "train.beam_size=2", "train.max_len=8", "train.device=cpu",
                 "train.tensorboard=false"]) == 0
    best = tmp_path / "runs" / "mine_xe" / "best.pt"
    assert f"best checkpoint: {best}" in capsys.readouterr().out

    new_picture = write_pictures(tmp_path / "new", {"new_9.jpg": (50, 60)}) / "new_9.jpg"
    assert main(["caption", str(new_picture), "--checkpoint", str(best), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    words = {word for caption in CAPTIONS for word in caption.split()} | {"<unk>"}
    assert result["image"] == str(new_picture)
    assert set(result["captions"][0]["caption"].split()) <= words
