"""The registered `vinvl-x152c4` extractor: the common extractor face, the original's
detections through it, its recorded attributes, `hin extract regions --extractor vinvl-x152c4`
(the released layout, resumable) and `hin extract nms-mode`."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.paths import FIXTURES
from hin.cli import main
from hin.errors import UsageError
from hin.extract import (
    build_extractor,
    extractor_from_attributes,
    extractor_record,
    nms_mode_report,
    prepare_pictures,
)
from hin.extract.images import PictureError
from hin.extract.vinvl.backbone import FrozenBatchNorm2d
from hin.extract.vinvl.loading import load_detector
from hin.extract.vinvl.preprocess import prepare

VINVL = FIXTURES / "vinvl"
WEIGHTS = VINVL / "vinvl_x152c4_small.pth"
PICTURE = "pic3_1203x301"          # the smallest network input of the three
NAME = "vinvl-x152c4"


@pytest.fixture(scope="module")
def vinvl_golden():
    return torch.load(VINVL / f"{PICTURE}.pt", weights_only=True)


@pytest.fixture
def picture_folder(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    shutil.copy(VINVL / f"{PICTURE}.png", folder / "COCO_val2014_000000000003.png")
    return folder


def _matches(entry: dict, golden: dict, mode: int) -> None:
    key = f"nms{mode}."
    np.testing.assert_allclose(entry["features"], golden[key + "features"].numpy(), atol=2e-3,
                               rtol=0)
    np.testing.assert_allclose(entry["boxes"], golden[key + "boxes"].numpy(), atol=1e-2, rtol=0)
    np.testing.assert_allclose(entry["cls_prob"], golden[key + "scores"].numpy(), atol=1e-4,
                               rtol=0)
    assert np.array_equal(entry["labels"], golden[key + "labels"].numpy())
    assert entry["size"].tolist() == golden["orig_size_hw"].tolist()
    assert entry["features"].dtype == np.float32 and entry["boxes"].dtype == np.float32


def test_extractor_gives_the_originals_detections_and_rebuilds_from_its_attributes(vinvl_golden):
    extractor = build_extractor(NAME, weights=str(WEIGHTS), device="cpu")
    assert (extractor.kind, extractor.feature_dim) == ("region", 64)
    picture = Image.open(VINVL / f"{PICTURE}.png")
    [entry] = prepare_pictures(extractor, [picture])
    _matches(entry, vinvl_golden, 1)
    recorded = extractor.attributes()
    assert recorded["extractor"] == NAME and recorded["nms_filter"] == 1
    assert recorded["weights"] == str(WEIGHTS.resolve())
    rebuilt = extractor_from_attributes({**recorded, "nms_filter": 2, "oscar_rows": 1},
                                        device="cpu")
    assert rebuilt.attributes() == {**recorded, "nms_filter": 2, "oscar_rows": 1}
    [entry] = rebuilt([rebuilt.preprocess(picture)])
    _matches(entry, vinvl_golden, 2)
    np.testing.assert_allclose(entry["oscar"], vinvl_golden["nms2.oscar_rows"].numpy(), atol=2e-3,
                               rtol=0)


def test_extractor_refuses_unusable_settings(tmp_path):
    with pytest.raises(UsageError, match="needs its weights file"):
        build_extractor(NAME)
    with pytest.raises(UsageError, match="nms_filter must be 1 .* or 2"):
        build_extractor(NAME, weights=str(WEIGHTS), nms_filter=3)
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        build_extractor(NAME, weights=str(WEIGHTS), device="cpu", precision="fp16")
    with pytest.raises(FileNotFoundError, match="vinvl_vg_x152c4.pth \\(593 MB"):
        extractor_from_attributes({"extractor": NAME, "weights": str(tmp_path / "gone.pth"),
                                   "nms_filter": 1, "storage_dtype": "float32"}, device="cpu")


def test_pictures_the_resize_rule_cannot_shrink_are_refused_by_size():
    """Short side round(1000 / 1999) = 1 px, long side 1999 (the original's rule, which
    breaks its own 1000 px cap here); from 2000:1 the short side would be 0."""
    assert prepare(Image.new("RGB", (1999, 1))).pixels.shape == (1, 1999, 3)
    with pytest.raises(PictureError, match="the picture is 2000x1 pixels: after resizing for VinVL its short "
                       "side would be 0 pixels; crop it or pad it to less than 2,000:1"):
        prepare(Image.new("RGB", (2000, 1)))


def test_bf16_runs_and_leaves_fp32_untouched(vinvl_golden):
    detector = load_detector(WEIGHTS)
    picture = prepare(Image.open(VINVL / f"{PICTURE}.png"))
    fast = detector.detect(picture.pixels, picture.height, picture.width, bf16=True)
    assert fast.features.dtype == torch.float32 and torch.isfinite(fast.features).all()
    assert 10 <= len(fast.kept.scores) <= 100
    exact = detector.detect(picture.pixels, picture.height, picture.width)
    assert torch.equal(exact.kept.proposal_idx, vinvl_golden["nms1.proposal_idx"])
    torch.testing.assert_close(exact.features, vinvl_golden["nms1.features"], atol=2e-3, rtol=0)


def test_bn_folded_for_bf16_computes_the_same_function(vinvl_golden):
    """prepare_bf16 folds each frozen BN into its convolution: in float32 arithmetic the
    folded model still computes the original's maps, up to rounding (folded weights and
    another summation order: ~1e-2 on res4 values up to 62, which near NMS margins of 1e-4
    may change a proposal, hence maps, not detections)."""
    detector = load_detector(WEIGHTS)
    detector.prepare_bf16()
    assert not any(isinstance(module, FrozenBatchNorm2d) for module in detector.modules())
    picture = prepare(Image.open(VINVL / f"{PICTURE}.png"))
    folded = detector.score(picture.pixels, picture.height, picture.width)
    torch.testing.assert_close(folded.res4, vinvl_golden["res4"], atol=2e-2, rtol=0)
    torch.testing.assert_close(folded.rpn.logits, vinvl_golden["rpn_objectness_logits"], atol=5e-3,
                               rtol=0)
    fast = detector.detect(picture.pixels, picture.height, picture.width, bf16=True)
    assert torch.isfinite(fast.features).all() and 10 <= len(fast.kept.scores) <= 100


def test_bf16_extractor_folds_its_model_and_records_the_arithmetic():
    extractor = build_extractor(NAME, weights=str(WEIGHTS), device="cpu", precision="bf16",
                                store_as="float16")
    assert extractor.attributes()["compute_dtype"] == "bfloat16"
    assert not any(isinstance(module, FrozenBatchNorm2d)
                   for module in extractor.model.modules())
    [entry] = prepare_pictures(extractor, [Image.open(VINVL / f"{PICTURE}.png")])
    assert entry["features"].dtype == np.float16 and np.isfinite(entry["features"]).all()
    assert len(entry["features"]) == len(entry["boxes"]) == len(entry["labels"]) >= 10


def test_cli_writes_the_released_layout_resumably_and_tells_the_mode(picture_folder, tmp_path, vinvl_golden,
                                                                     capsys):
    out = tmp_path / "regions.h5"
    command = ["extract", "regions", "--images", str(picture_folder), "--out", str(out),
               "--extractor", NAME, "--weights", str(WEIGHTS), "--nms-filter", "2",
               "--oscar-rows", "--workers", "0", "--device", "cpu"]
    assert main(command) == 0
    assert "wrote 1 images" in capsys.readouterr().out
    count = int(vinvl_golden["nms2.num_detections"])
    with h5py.File(out) as handle:
        shapes = {name: (handle[name].shape, handle[name].dtype.name) for name in handle}
        assert handle.attrs["hin_nms_filter"] == 2
        assert handle.attrs["hin_extractor"] == NAME
    assert shapes == {"3_features": ((count, 64), "float32"), "3_boxes": ((count, 4), "float32"),
                      "3_size": ((2,), "int64"), "3_cls_prob": ((count,), "float32"),
                      "3_labels": ((count,), "int64"), "3_oscar": ((count, 70), "float32")}
    assert main(command) == 0
    assert "wrote 0 images" in capsys.readouterr().out
    assert main(["extract", "nms-mode", str(out)]) == 0
    assert "made with nms_filter 2" in capsys.readouterr().out


def test_cli_vinvl_flags_need_the_vinvl_extractor_and_its_weights(picture_folder, tmp_path, capsys):
    base = ["extract", "regions", "--images", str(picture_folder), "--out", str(tmp_path / "r.h5")]
    assert main([*base, "--nms-filter", "2"]) == 2
    assert "--nms-filter set the vinvl-x152c4 extractor" in capsys.readouterr().err
    assert main([*base, "--extractor", NAME, "--weights", str(WEIGHTS), "--threshold", "0.5"]) == 2
    assert "--threshold do not apply to vinvl-x152c4" in capsys.readouterr().err
    missing = tmp_path / "vinvl_vg_x152c4.pth"
    assert main([*base, "--extractor", NAME, "--weights", str(missing)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"not found at {missing}" in error and "--weights" in error


def _region_file(path: Path, golden_files: list[dict], mode: int) -> Path:
    with h5py.File(path, "w") as handle:
        for image_id, golden in enumerate(golden_files):
            handle[f"{image_id}_features"] = golden[f"nms{mode}.features"].numpy()
            handle[f"{image_id}_boxes"] = golden[f"nms{mode}.boxes"].numpy()
    return path


def test_nms_mode_is_told_from_the_boxes(tmp_path):
    goldens = [torch.load(path, weights_only=True) for path in sorted(VINVL.glob("pic*.pt"))]
    one = nms_mode_report(_region_file(tmp_path / "one.h5", goldens, 1))
    two = nms_mode_report(_region_file(tmp_path / "two.h5", goldens, 2))
    assert "3 of 3 images" in one and "made with nms_filter 1" in one
    assert "0 of 3 images" in two and "made with nms_filter 2" in two
    with h5py.File(tmp_path / "grid.h5", "w") as handle:
        handle["5_features"] = np.zeros((4, 8), np.float32)
    assert "has no boxes ('5_boxes')" in nms_mode_report(tmp_path / "grid.h5")


def test_a_recorded_weights_path_is_the_file_loaded_with_home_expanded(tmp_path, monkeypatch):
    """`import-checkpoint --region-extractor vinvl-x152c4 weights=~/...` records the file the
    extractor loaded, not `<cwd>/~/...`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(WEIGHTS, tmp_path / "vinvl.pth")
    attributes, _ = extractor_record("region", [NAME, "weights=~/vinvl.pth", "nms_filter=2"], "cpu")
    assert attributes["weights"] == str((tmp_path / "vinvl.pth").resolve())
    assert attributes["nms_filter"] == 2
