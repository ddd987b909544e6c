"""End to end: the small-width VinVL detector and a tiny CLIP extract a picture's features with
`hin extract`, a small HIN records both extractors, and `hin caption picture.png` (which
rebuilds the extractors from the checkpoint's records through the registry) gives the same
captions as captioning the extracted files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers.extract_models import CLIP_HIDDEN, tiny_hin_config, write_tiny_clip
from helpers.paths import FIXTURES
from hin.checkpoint import save
from hin.cli import main
from hin.data.vocab import Vocabulary
from hin.extract import read_attributes
from hin.model import HIN

pytest.importorskip("transformers")

VINVL = FIXTURES / "vinvl"
VINVL_DIM = 64                      # the fixture model's C5 width


def test_caption_a_picture_with_vinvl_regions_equals_captioning_its_extracted_files(
        tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    picture = pictures / "COCO_val2014_000000000003.png"
    shutil.copy(VINVL / "pic3_1203x301.png", picture)
    run = ["--images", str(pictures), "--workers", "0", "--device", "cpu"]
    assert main(["extract", "grid", *run, "--out", str(tmp_path / "grid.h5"),
                 "--model", str(write_tiny_clip(tmp_path / "clip"))]) == 0
    assert main(["extract", "regions", *run, "--out", str(tmp_path / "region.h5"),
                 "--extractor", "vinvl-x152c4",
                 "--weights", str(VINVL / "vinvl_x152c4_small.pth")]) == 0
    capsys.readouterr()
    vocab = Vocabulary.from_counts({"a": 9, "red": 8, "dog": 7, "on": 6, "grass": 5}, min_freq=1)
    torch.manual_seed(0)
    model = HIN(tiny_hin_config(len(vocab), CLIP_HIDDEN, VINVL_DIM)).eval()
    features = {"grid": read_attributes(tmp_path / "grid.h5"),
                "region": read_attributes(tmp_path / "region.h5")}
    assert features["region"]["extractor"] == "vinvl-x152c4"
    checkpoint = save(tmp_path / "tiny.pt", model, vocabulary=vocab.to_dict(), features=features)
    common = ["--checkpoint", str(checkpoint), "--top-k", "2", "--json", "--device", "cpu"]
    assert main(["caption", str(picture), *common]) == 0
    from_picture = json.loads(capsys.readouterr().out)
    assert main(["caption", "--grid", str(tmp_path / "grid.h5"), "--region",
                 str(tmp_path / "region.h5"), "--ids", "3", *common]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert len(from_picture[0]["captions"]) == 2
    assert from_picture[0]["captions"] == from_files[0]["captions"]
