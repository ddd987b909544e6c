"""VinVL TSV import: both features-line variants, predictions, empty images, checks, resume."""

from __future__ import annotations

import base64
import json

import h5py
import numpy as np
import pytest

from hin.cli import main
from hin.extract import import_vinvl, read_attributes
from hin.extract.vinvl import VinVLFormatError


def _rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-3, 3, (count, 2054)).astype(np.float32)


def _encoded(rows: np.ndarray) -> str:
    return base64.b64encode(rows.tobytes()).decode("ascii")


def _prediction(key: str, count: int, height: int = 480, width: int = 640) -> str:
    objects = [{"rect": [i, i + 1.5, i + 10, i + 20.25], "class": "dog", "conf": 0.9 - i / 100}
               for i in range(count)]
    return f"{key}\t{json.dumps({'objects': objects, 'image_h': height, 'image_w': width})}\n"


@pytest.fixture
def vinvl_files(tmp_path):
    """Three images (3, 0 and 2 boxes) in both features-line variants, with predictions."""
    counts = {"COCO_val2014_000000391895": 3, "COCO_val2014_000000000042": 0,
              "COCO_train2014_000000000007": 2}
    rows = {key: _rows(count, seed) for seed, (key, count) in enumerate(counts.items())}
    keys = list(counts)
    features = tmp_path / "features.tsv"
    features.write_text(
        f"{keys[0]}\t{counts[keys[0]]}\t{_encoded(rows[keys[0]])}\n"
        f"{keys[1]}\t{json.dumps({'num_boxes': 0, 'features': ''})}\n"
        f"{keys[2]}\t{json.dumps({'num_boxes': 2, 'features': _encoded(rows[keys[2]])})}\n")
    predictions = tmp_path / "predictions.tsv"
    predictions.write_text("".join(_prediction(key, count) for key, count in counts.items()))
    return features, predictions, rows


def test_round_trip_keeps_appearance_drops_geometry_and_reads_predictions(vinvl_files, tmp_path):
    features, predictions, rows = vinvl_files
    out = tmp_path / "region.h5"
    report = import_vinvl(features, out, predictions, dtype="float32", progress=False)
    assert (report.written, report.images_in_file) == (3, 3)
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["391895_features"][()],
                                      rows["COCO_val2014_000000391895"][:, :2048])
        np.testing.assert_array_equal(handle["7_features"][()],
                                      rows["COCO_train2014_000000000007"][:, :2048])
        np.testing.assert_array_equal(handle["391895_boxes"][()][1], [1, 2.5, 11, 21.25])
        np.testing.assert_allclose(handle["391895_cls_prob"][()], [0.9, 0.89, 0.88], rtol=1e-6)
        assert handle["391895_size"][()].tolist() == [480, 640]
        empty = {suffix: handle[f"42_{suffix}"].shape
                 for suffix in ("features", "boxes", "cls_prob", "size")}
    assert empty == {"features": (0, 2048), "boxes": (0, 4), "cls_prob": (0,), "size": (2,)}
    assert read_attributes(out)["extractor"] == "vinvl-tsv"
    assert read_attributes(out)["feature_dim"] == 2048


def test_default_storage_is_float16_and_without_predictions_only_features(vinvl_files, tmp_path):
    features, _, rows = vinvl_files
    out = tmp_path / "region.h5"
    import_vinvl(features, out, progress=False)
    with h5py.File(out) as handle:
        assert sorted(handle) == ["391895_features", "42_features", "7_features"]
        assert handle["7_features"].dtype == np.float16
        np.testing.assert_allclose(handle["7_features"][()],
                                   rows["COCO_train2014_000000000007"][:, :2048], atol=2e-3)
    assert read_attributes(out)["has_boxes"] == 0


def test_rerun_skips_imported_images(vinvl_files, tmp_path):
    features, predictions, _ = vinvl_files
    out = tmp_path / "region.h5"
    import_vinvl(features, out, predictions, chunk_size=1, progress=False)
    again = import_vinvl(features, out, predictions, progress=False)
    assert (again.written, again.skipped, again.images_in_file) == (0, 3, 3)


def test_keys_in_a_different_order_are_refused(vinvl_files, tmp_path):
    features, predictions, _ = vinvl_files
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text(lines[1] + lines[0] + lines[2])
    with pytest.raises(VinVLFormatError, match=r"line 1: .*has key 'COCO_val2014_000000391895' "
                                               r"but .*has 'COCO_val2014_000000000042'.*same "
                                               r"order"):
        import_vinvl(features, tmp_path / "r.h5", predictions, progress=False)


def test_predictions_file_that_ends_early_is_refused(vinvl_files, tmp_path):
    features, predictions, _ = vinvl_files
    predictions.write_text("".join(predictions.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(VinVLFormatError, match=r"predictions.tsv ends at line 2"):
        import_vinvl(features, tmp_path / "r.h5", predictions, progress=False)


def test_box_count_mismatch_and_bad_lines_name_file_line_and_key(vinvl_files, tmp_path):
    features, predictions, _ = vinvl_files
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text(_prediction("COCO_val2014_000000391895", 2) + lines[1] + lines[2])
    with pytest.raises(VinVLFormatError, match=r"predictions.tsv:1 \(key COCO_val2014_000000391895"
                                               r"\): 2 objects but the features line has 3"):
        import_vinvl(features, tmp_path / "r.h5", predictions, progress=False)

    features.write_text(f"COCO_val2014_000000000001\t2\t{_encoded(_rows(1, 0))}\n")
    with pytest.raises(VinVLFormatError, match=r"features.tsv:1 \(key COCO_val2014_000000000001\): "
                                               r"2054 float32 values for num_boxes=2"):
        import_vinvl(features, tmp_path / "r.h5", progress=False)


def test_float16_overflow_is_refused_not_stored_as_inf(tmp_path):
    rows = _rows(1, 0)
    rows[0, 5] = 1e6
    features = tmp_path / "features.tsv"
    features.write_text(f"img_5\t1\t{_encoded(rows)}\n")
    with pytest.raises(VinVLFormatError, match=r"image 5\): values exceed the float16 range; "
                                               r"import with `--store-as float32`"):
        import_vinvl(features, tmp_path / "r.h5", progress=False)


def test_cli_imports_vinvl(vinvl_files, tmp_path, capsys):
    features, predictions, _ = vinvl_files
    out = tmp_path / "region.h5"
    assert main(["extract", "regions", "--vinvl-tsv", str(features), "--predictions",
                 str(predictions), "--out", str(out), "--store-as", "float32"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    with h5py.File(out) as handle:
        assert handle["391895_features"].dtype == np.float32
