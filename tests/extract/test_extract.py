"""Picture -> feature extraction: ids, CLIP preparation, grid and DETR features, resumable files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.extract_models import (
    CLIP_HIDDEN,
    CLIP_PROJECTION,
    CLIP_TOKENS,
    DETR_D_MODEL,
    DETR_QUERIES,
    write_pictures,
    write_tiny_detr,
)
from hin.cli import main
from hin.extract import (
    ClipPreprocessor,
    FeatureWriter,
    build_extractor,
    extract_to_file,
    extractor_from_attributes,
    image_id_from_name,
    list_images,
    read_attributes,
)
from hin.extract.images import ImageListError
from hin.extract.writer import FeatureFileError

transformers = pytest.importorskip("transformers")

PICTURES = {"COCO_val2014_000000391895.jpg": (40, 60), "COCO_val2014_000000000042.jpg": (50, 30),
            "7.png": (33, 33)}


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory):
    return write_tiny_detr(tmp_path_factory.mktemp("detr"))


def test_image_ids_come_from_coco_names_or_numeric_stems():
    assert image_id_from_name("COCO_val2014_000000391895") == 391895
    assert image_id_from_name("391895") == 391895
    assert image_id_from_name("vg_2345") == 2345
    with pytest.raises(ImageListError, match=r"cannot read an image id from 'holiday'.*rename"):
        image_id_from_name("holiday")


def test_list_images_from_folder_and_list_file(pictures, tmp_path):
    files = list_images(pictures)
    assert [file.image_id for file in files] == [7, 42, 391895]
    listing = tmp_path / "list.txt"
    listing.write_text("pictures/7.png\n\npictures/COCO_val2014_000000000042.jpg\n")
    assert [(f.image_id, f.path.name) for f in list_images(listing)] == [
        (7, "7.png"), (42, "COCO_val2014_000000000042.jpg")]


def test_list_images_refuses_unnamed_and_duplicate_ids(pictures):
    Image.new("RGB", (4, 4)).save(pictures / "holiday.jpg")
    Image.new("RGB", (4, 4)).save(pictures / "x_7.jpg")
    with pytest.raises(ImageListError, match=r"(?s)2 picture name problem.*holiday.jpg: cannot read.*both give image "
                                             r"id 7"):
        list_images(pictures)


@pytest.mark.parametrize("size", [(300, 400), (400, 300), (224, 224), (257, 499)])
def test_clip_preparation_equals_transformers_clip_processor(size):
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    expected = transformers.CLIPImageProcessorPil()(images=picture, return_tensors="np")
    np.testing.assert_allclose(ClipPreprocessor()(picture), expected["pixel_values"][0],
                               atol=1e-5)


def test_clip_crop_offset_rounds_like_openai_clip_not_like_transformers():
    """A 640x427 picture resizes to 335x224: 111 surplus columns, OpenAI CLIP (torchvision)
    starts the crop at round(55.5) = 56, transformers at 55: one column apart, exactly."""
    rng = np.random.default_rng(2)
    picture = Image.fromarray(rng.integers(0, 256, (427, 640, 3), dtype=np.uint8))
    ours = ClipPreprocessor()(picture)
    theirs = transformers.CLIPImageProcessorPil()(images=picture,
                                                  return_tensors="np")["pixel_values"][0]
    assert not np.allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(ours[:, :, :-1], theirs[:, :, 1:], atol=1e-5)


def test_grid_features_are_post_layernorm_patches_and_projected_class_token(clip_dir, pictures,
                                                                             tmp_path):
    (pictures / "13.jpg").write_bytes(b"not a picture")
    out = tmp_path / "grid.h5"
    extractor = build_extractor("clip-grid", model=str(clip_dir), device="cpu")
    report = extract_to_file(extractor, list_images(pictures), out, batch_size=2, chunk_size=2,
                             workers=0, progress=False)
    assert (report.written, report.skipped, report.images_in_file) == (3, 0, 3)
    assert [path.name for path, _ in report.failed] == ["13.jpg"]
    assert "13.jpg\t" in report.failure_report.read_text()

    model = transformers.CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    picture = Image.open(pictures / "COCO_val2014_000000391895.jpg").convert("RGB")
    pixels = torch.from_numpy(ClipPreprocessor(size=32)(picture))[None]
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True)
        patches = model.vision_model.post_layernorm(hidden.last_hidden_state[0, 1:])
    with h5py.File(out) as handle:
        assert sorted(handle) == [f"{image_id}_{suffix}" for image_id in ("391895", "42", "7")
                                  for suffix in ("crop", "features", "global", "size")]
        features, embedding = handle["391895_features"][()], handle["391895_global"][()]
        # 40x60 picture: resized to 32x48, centre crop x 8..40 = the picture's x 10..50
        assert handle["391895_size"][()].tolist() == [40, 60]
        np.testing.assert_allclose(handle["391895_crop"][()], [10, 0, 50, 40])
        # 50x30 picture: resized to 53x32 (truncated), crop y 10..42 (10.5 rounds to even)
        np.testing.assert_allclose(handle["42_crop"][()], [0, 10 * 50 / 53, 30, 42 * 50 / 53], rtol=1e-6)
        np.testing.assert_allclose(handle["7_crop"][()], [0, 0, 33, 33])
    assert features.shape == (CLIP_TOKENS, CLIP_HIDDEN) and features.dtype == np.float16
    assert embedding.shape == (CLIP_PROJECTION,) and embedding.dtype == np.float16
    np.testing.assert_allclose(features, patches.numpy(), atol=2e-3)
    np.testing.assert_allclose(embedding, hidden.image_embeds[0].numpy(), atol=2e-3)
    assert not np.allclose(features, hidden.last_hidden_state[0, 1:].numpy(), atol=0.1)
    assert read_attributes(out) == {
        "extractor": "clip-grid", "kind": "grid", "model": str(clip_dir),
        "feature_dim": CLIP_HIDDEN, "tokens": CLIP_TOKENS, "global_dim": CLIP_PROJECTION,
        "image_size": 32, "grid_rows": 4, "grid_cols": 4, "compute_dtype": "float32",
        "storage_dtype": "float16",
        "orientation": "stored"}


def test_rerun_skips_done_ids_and_adds_new_pictures(clip_dir, pictures, tmp_path):
    out = tmp_path / "grid.h5"
    extractor = build_extractor("clip-grid", model=str(clip_dir), device="cpu")
    extract_to_file(extractor, list_images(pictures), out, workers=0, progress=False)
    with h5py.File(out) as handle:
        before = handle["42_features"][()]
    write_pictures(pictures, {"5.png": (20, 20)}, seed=3)
    report = extract_to_file(extractor, list_images(pictures), out, workers=2, progress=False)
    assert (report.written, report.skipped, report.images_in_file) == (1, 3, 4)
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["42_features"][()], before)
        assert "5_features" in handle


def test_killed_run_leaves_whole_parts_that_the_next_run_merges(tmp_path):
    out = tmp_path / "f.h5"
    attributes = {"extractor": "test", "feature_dim": 2}
    first = FeatureWriter(out, attributes)
    first.write_chunk({1: {"features": np.ones((3, 2), np.float16)}})
    first.write_chunk({2: {"features": np.zeros((1, 2), np.float16)}})
    (first.parts / "part-000002.h5.tmp").write_bytes(b"half a chunk")   # killed mid-chunk
    assert not out.exists()

    resumed = FeatureWriter(out, attributes)
    assert resumed.done_ids == {1, 2}
    resumed.write_chunk({3: {"features": np.full((2, 2), 3, np.float16)}})
    assert resumed.finish() == 3
    assert not first.parts.exists()
    with h5py.File(out) as handle:
        assert sorted(handle) == ["1_features", "2_features", "3_features"]
        np.testing.assert_array_equal(handle["3_features"][()], np.full((2, 2), 3))


def test_output_from_another_model_is_never_extended(tmp_path):
    out = tmp_path / "f.h5"
    writer = FeatureWriter(out, {"extractor": "clip-grid", "model": "a"})
    writer.write_chunk({1: {"features": np.ones((1, 2), np.float16)}})
    writer.finish()
    with pytest.raises(FeatureFileError, match=r"model: file has 'a', this run 'b'.*mix two "
                                               r"kinds of features"):
        FeatureWriter(out, {"extractor": "clip-grid", "model": "b"})


def test_detr_regions_keep_confident_queries_with_boxes_in_picture_pixels(detr_dir, pictures,
                                                                          tmp_path):
    out = tmp_path / "region.h5"
    extractor = build_extractor("detr", model=str(detr_dir), revision=None, device="cpu",
                                threshold=0.0, max_regions=4)
    report = extract_to_file(extractor, list_images(pictures), out, batch_size=2,
                             workers=0, progress=False)
    assert report.written == 3 and not report.failed
    with h5py.File(out) as handle:
        for image_id, (height, width) in ((391895, (40, 60)), (42, (50, 30)), (7, (33, 33))):
            features = handle[f"{image_id}_features"][()]
            boxes = handle[f"{image_id}_boxes"][()]
            scores = handle[f"{image_id}_cls_prob"][()]
            assert features.shape == (4, DETR_D_MODEL) and features.dtype == np.float16
            assert boxes.shape == (4, 4) and scores.shape == (4,)
            assert handle[f"{image_id}_size"][()].tolist() == [height, width]
            assert np.all(np.diff(scores) <= 0)
            assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    assert read_attributes(out)["feature_dim"] == DETR_D_MODEL
    assert read_attributes(out)["extractor"] == "detr"


def test_detr_regions_are_the_decoder_states_of_the_most_confident_queries(detr_dir, pictures):
    extractor = build_extractor("detr", model=str(detr_dir), revision=None, device="cpu",
                                threshold=0.0, max_regions=DETR_QUERIES)
    picture = Image.open(pictures / "7.png").convert("RGB")
    prepared = extractor.preprocess(picture)
    entry = extractor([prepared])[0]
    with torch.no_grad():
        output = extractor.model(pixel_values=torch.from_numpy(prepared.pixels)[None])
    confidence = output.logits.softmax(-1)[0, :, :-1].max(-1).values
    order = confidence.argsort(descending=True)
    np.testing.assert_allclose(entry["cls_prob"], confidence[order].numpy(), rtol=1e-5)
    np.testing.assert_allclose(entry["features"], output.last_hidden_state[0, order].numpy(),
                               atol=2e-3)


def test_detr_without_confident_queries_writes_empty_regions(detr_dir, pictures):
    extractor = build_extractor("detr", model=str(detr_dir), revision=None, device="cpu",
                                threshold=0.99)
    entry = extractor([extractor.preprocess(Image.open(pictures / "7.png").convert("RGB"))])[0]
    assert entry["features"].shape == (0, DETR_D_MODEL)
    assert entry["boxes"].shape == (0, 4) and entry["cls_prob"].shape == (0,)


def test_cli_extract_grid_and_regions(clip_dir, detr_dir, pictures, tmp_path, capsys):
    assert main(["extract", "grid", "--images", str(pictures), "--out", str(tmp_path / "g.h5"),
                 "--model", str(clip_dir), "--workers", "0", "--device", "cpu"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert main(["extract", "regions", "--images", str(pictures), "--out",
                 str(tmp_path / "r.h5"), "--model", str(detr_dir), "--threshold", "0",
                 "--max-regions", "2", "--workers", "0"]) == 0
    with h5py.File(tmp_path / "r.h5") as handle:
        assert handle["7_features"].shape == (2, DETR_D_MODEL)
    (pictures / "9.jpg").write_bytes(b"broken")
    assert main(["extract", "grid", "--images", str(pictures), "--out", str(tmp_path / "g.h5"),
                 "--model", str(clip_dir), "--workers", "0"]) == 1
    assert "1 pictures could not be read" in capsys.readouterr().out


def test_cli_names_missing_weights(tmp_path, pictures, capsys):
    assert main(["extract", "grid", "--images", str(pictures), "--out", str(tmp_path / "g.h5"),
                 "--model", str(tmp_path / "nowhere")]) == 2
    assert "could not load CLIPVisionModelWithProjection weights" in capsys.readouterr().err


def test_extraction_skips_pictures_over_the_pixel_limit_and_says_the_limit(clip_dir, pictures,
                                                                           tmp_path, monkeypatch):
    monkeypatch.setenv("HIN_MAX_PIXELS", "2000")      # 2400 pixels is over; 1500 and 1089 are not
    extractor = build_extractor("clip-grid", model=str(clip_dir), device="cpu")
    report = extract_to_file(extractor, list_images(pictures), tmp_path / "grid.h5", workers=0,
                             progress=False)
    assert report.written == 2
    [(path, reason)] = report.failed
    assert path.name == "COCO_val2014_000000391895.jpg"
    assert "over the limit of 2,000" in reason and "HIN_MAX_PIXELS=2400" in reason


def test_store_as_float32_keeps_the_fp32_features_and_is_recorded(clip_dir, detr_dir, pictures,
                                                                  tmp_path, capsys):
    """The reference stored its CLIP grids as float32: `--store-as float32` does the same (for
    DETR regions too), the default float16 rounds those very values, and the extractor
    rebuilt from the file (as a checkpoint does) stores alike."""
    stored = {}
    for store_as in ("float16", "float32"):
        out = tmp_path / f"{store_as}.h5"
        assert main(["extract", "grid", "--images", str(pictures), "--out", str(out), "--model",
                     str(clip_dir), "--workers", "0", "--device", "cpu", "--store-as", store_as]) == 0
        assert read_attributes(out)["storage_dtype"] == store_as
        with h5py.File(out) as handle:
            stored[store_as] = handle["42_features"][()], handle["42_global"][()]
    for exact, rounded in zip(stored["float32"], stored["float16"]):
        assert exact.dtype == np.float32 and rounded.dtype == np.float16
        assert np.array_equal(exact.astype(np.float16), rounded)
        assert not np.array_equal(exact, rounded.astype(np.float32))
    rebuilt = extractor_from_attributes(read_attributes(tmp_path / "float32.h5"), device="cpu")
    assert rebuilt.attributes()["storage_dtype"] == "float32"
    assert main(["extract", "regions", "--images", str(pictures), "--out", str(tmp_path / "r.h5"),
                 "--model", str(detr_dir), "--threshold", "0", "--workers", "0",
                 "--store-as", "float32"]) == 0
    with h5py.File(tmp_path / "r.h5") as handle:
        assert handle["7_features"].dtype == np.float32
    capsys.readouterr()
    assert main(["extract", "grid", "--extractor", "synth-grid", "--images", str(pictures),
                 "--out", str(tmp_path / "s.h5"), "--store-as", "float32"]) == 2
    assert "has no option store_as" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stored as one of float16, float32, got 'float64'"):
        build_extractor("clip-grid", model=str(clip_dir), device="cpu", store_as="float64")


def test_a_pictures_features_do_not_depend_on_the_other_pictures_given_with_it(detr_dir, pictures):
    """A mixed batch would pad every picture to the largest; the DETR extractor runs each
    prepared size on its own, so hin extract, hin caption a.jpg b.jpg, hin explain and the
    server give a picture the regions it has alone."""
    from hin.extract.pipeline import prepare_pictures

    detr = build_extractor("detr", model=str(detr_dir), revision=None, device="cpu",
                           threshold=0.0, max_regions=4)
    loaded = [Image.open(path).convert("RGB") for path in sorted(pictures.iterdir())]
    assert len({picture.size for picture in loaded}) == len(loaded)
    together = prepare_pictures(detr, loaded)
    for picture, entry in zip(loaded, together):
        [alone] = prepare_pictures(detr, [picture])
        np.testing.assert_array_equal(entry["features"], alone["features"])
        np.testing.assert_array_equal(entry["boxes"], alone["boxes"])
