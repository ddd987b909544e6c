"""Extraction spread over shards (--shard K/N, torchrun ranks) and joined by `hin extract merge`;
extraction precision (fp32 / bf16 autocast / fp16 on CUDA)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.extract_models import (
    CLIP_HIDDEN,
    DETR_D_MODEL,
    DETR_QUERIES,
    write_tiny_detr,
)
from hin.cli import main
from hin.config import ConfigError
from hin.devices import resolve_precision
from hin.errors import UsageError
from hin.extract import (
    FeatureWriter,
    ImageFile,
    Shard,
    build_extractor,
    choose_shard,
    extract_to_file,
    list_images,
    merge_shards,
    prepare_pictures,
    read_attributes,
)
from hin.extract.pipeline import extraction_attributes, source_stamp
from hin.extract.shards import fingerprint
from hin.extract.writer import FeatureFileError

pytest.importorskip("transformers")

PICTURES = {f"COCO_val2014_{image_id:012d}.jpg": (30 + image_id, 40) for image_id in (3, 8, 21, 34, 55)}
ATTRIBUTES = {"extractor": "test", "feature_dim": 2}


def extract(clip_dir, pictures, out, *more):
    return main(["extract", "grid", "--images", str(pictures), "--out", str(out), "--model",
                 str(clip_dir), "--workers", "0", "--device", "cpu", "--batch-size", "1",
                 "--chunk-size", "1", *more])


def contents(path):
    """Everything a feature file holds: attributes, and per dataset dtype, shape, values, attrs."""
    with h5py.File(path) as handle:
        return dict(handle.attrs), {name: (handle[name].dtype, handle[name][()],
                                           dict(handle[name].attrs)) for name in handle}


def assert_same_file(left, right):
    (left_attrs, left_data), (right_attrs, right_data) = contents(left), contents(right)
    assert left_attrs == right_attrs
    assert sorted(left_data) == sorted(right_data)
    for name, (dtype, values, attrs) in left_data.items():
        assert right_data[name][0] == dtype and right_data[name][2] == attrs
        np.testing.assert_array_equal(right_data[name][1], values)


def test_two_shards_merged_equal_one_run_id_for_id(clip_dir, pictures, tmp_path, capsys):
    assert extract(clip_dir, pictures, tmp_path / "whole.h5") == 0
    out = tmp_path / "grid.h5"
    assert extract(clip_dir, pictures, out, "--shard", "2/2") == 0
    assert "shard 2/2 has finished; once all 2 have: hin extract merge" in capsys.readouterr().out
    assert extract(clip_dir, pictures, out, "--shard", "1/2") == 0
    assert not out.exists()
    with h5py.File(tmp_path / "grid.shard-1-of-2.h5") as first, \
            h5py.File(tmp_path / "grid.shard-2-of-2.h5") as second:
        assert {name.split("_")[0] for name in first} == {"3", "8"}
        assert {name.split("_")[0] for name in second} == {"21", "34", "55"}
    assert read_attributes(tmp_path / "grid.shard-1-of-2.h5")["shard"] == "1/2"
    assert read_attributes(tmp_path / "grid.shard-1-of-2.h5")["shard_of"] == fingerprint(
        [3, 8, 21, 34, 55])

    assert main(["extract", "merge", str(out)]) == 0
    assert "merged 2 shard files; the file holds 5 images" in capsys.readouterr().out
    assert_same_file(tmp_path / "whole.h5", out)
    assert [path.name for path in tmp_path.glob("grid*")] == ["grid.h5"]


def test_shards_are_disjoint_contiguous_blocks_covering_every_picture():
    for count in range(1, 5):
        for pictures in range(0, 11):
            files = [ImageFile(image_id, f"{image_id}.jpg") for image_id in
                     np.random.default_rng(pictures).permutation(100)[:pictures].tolist()]
            taken = [Shard(index, count).take(files) for index in range(1, count + 1)]
            assert [file for shard in taken for file in shard] == sorted(
                files, key=lambda file: file.image_id)
            assert max(map(len, taken)) - min(map(len, taken)) <= 1


@pytest.mark.parametrize("text, message", [
    ("0/2", r"shard 0/2 does not exist: shards are numbered 1 to 2"),
    ("3/2", r"shard 3/2 does not exist: shards are numbered 1 to 2"),
    ("x", r"--shard must be K/N .* got 'x'"),
    ("1/0", r"shard 1/0 does not exist"),
])
def test_shard_parser_names_the_mistake(text, message):
    with pytest.raises(UsageError, match=message):
        Shard.parse(text)


def test_cli_refuses_a_bad_shard_in_one_line(clip_dir, pictures, tmp_path, capsys):
    assert extract(clip_dir, pictures, tmp_path / "g.h5", "--shard", "3/2") == 2
    assert "shard 3/2 does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("g*"))
    assert main(["extract", "regions", "--vinvl-tsv", str(tmp_path / "features.tsv"), "--out",
                 str(tmp_path / "r.h5"), "--shard", "1/2"]) == 2
    assert "a VinVL TSV import runs whole (drop --shard)" in capsys.readouterr().err


def test_torchrun_rank_chooses_the_shard_unless_one_is_given():
    assert choose_shard("2/4", {}) == Shard(2, 4)
    assert choose_shard(None, {"RANK": "1", "WORLD_SIZE": "3"}) == Shard(2, 3)
    assert choose_shard("1/2", {"RANK": "1", "WORLD_SIZE": "3"}) == Shard(1, 2)
    assert choose_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert choose_shard("1/1", {}) is None
    assert choose_shard(None, {}) is None


def test_cli_under_torchrun_writes_this_ranks_shard(clip_dir, pictures, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert extract(clip_dir, pictures, tmp_path / "g.h5") == 0
    assert [path.name for path in tmp_path.glob("g*")] == ["g.shard-2-of-2.h5"]


def write_shard(out, shard, entries, shard_of="5 ids"):
    writer = FeatureWriter(out, ATTRIBUTES, shard, shard_of)
    writer.write_chunk(entries)
    return writer


def test_merge_names_the_shard_that_has_not_finished_and_leaves_out_alone(tmp_path):
    out = tmp_path / "f.h5"
    write_shard(out, Shard(1, 3), {1: {"features": np.ones((1, 2), np.float16)}}).finish()
    write_shard(out, Shard(2, 3), {2: {"features": np.ones((1, 2), np.float16)}})   # killed
    with pytest.raises(FeatureFileError, match=r"shard 2/3 has not finished \(1 images so far in "
                                               r".*f.shard-2-of-3.h5.parts\): run it again with "
                                               r"--shard 2/3.*shard 3/3 is missing.*nothing was merged"):
        merge_shards(out)
    assert not out.exists() and Shard(1, 3).path(out).exists()


def test_merge_refuses_conflicting_ids_and_shards_of_other_features(tmp_path):
    out = tmp_path / "f.h5"
    write_shard(out, Shard(1, 2), {1: {"features": np.ones((1, 2), np.float16)}}).finish()
    write_shard(out, Shard(2, 2), {1: {"features": np.zeros((1, 2), np.float16)}}).finish()
    with pytest.raises(FeatureFileError, match=r"image id 1 has different features in "
                                               r".*f.shard-1-of-2.h5 and .*f.shard-2-of-2.h5"):
        merge_shards(out)
    assert not out.exists()
    other = tmp_path / "other.h5"
    FeatureWriter(other, {**ATTRIBUTES, "feature_dim": 3}, Shard(2, 2), "5 ids").finish()
    with pytest.raises(FeatureFileError, match=r"feature_dim: file has 3, this run 2"):
        merge_shards(out, [Shard(1, 2).path(out), Shard(2, 2).path(other)])
    with pytest.raises(FeatureFileError, match=r"no shard files to merge into .*nothing.h5"):
        merge_shards(tmp_path / "nothing.h5")


def test_merge_refuses_a_shard_cut_from_another_picture_list(tmp_path):
    out = tmp_path / "f.h5"
    write_shard(out, Shard(1, 2), {1: {"features": np.ones((1, 2), np.float16)}}).finish()
    write_shard(out, Shard(2, 2), {2: {"features": np.ones((1, 2), np.float16)}},
                shard_of="6 ids").finish()
    with pytest.raises(FeatureFileError, match=r"f.shard-2-of-2.h5 is shard 2/2 of other pictures "
                                               r"\(6 ids, not 5 ids\): run shard 2/2 again on the "
                                               r"same pictures as the others"):
        merge_shards(out)


def test_a_merge_killed_after_its_rename_completes_on_the_next_try(tmp_path):
    out = tmp_path / "f.h5"
    for index in (1, 2):
        write_shard(out, Shard(index, 2), {index: {"features": np.full((1, 2), index, np.float16)}}
                    ).finish()
    kept = Shard(2, 2).path(out).read_bytes()
    merge_shards(out)
    Shard(2, 2).path(out).write_bytes(kept)        # as if killed before deleting the shards
    assert merge_shards(out).images_in_file == 2
    assert not Shard(2, 2).path(out).exists()


def test_a_shard_resumes_its_parts_and_skips_what_the_output_holds(tmp_path):
    out = tmp_path / "f.h5"
    whole = FeatureWriter(out, ATTRIBUTES)
    whole.write_chunk({1: {"features": np.ones((1, 2), np.float16)}})
    whole.finish()
    killed = write_shard(out, Shard(1, 2), {2: {"features": np.ones((1, 2), np.float16)}})
    (killed.parts / "part-000001.h5.tmp").write_bytes(b"half a chunk")
    resumed = FeatureWriter(out, ATTRIBUTES, Shard(1, 2), "5 ids")
    assert resumed.done_ids == {1, 2}
    resumed.write_chunk({3: {"features": np.ones((1, 2), np.float16)}})
    assert resumed.finish() == 2
    with pytest.raises(FeatureFileError, match=r"shard_of: file has '5 ids', this run '6 ids'"):
        FeatureWriter(out, ATTRIBUTES, Shard(1, 2), "6 ids")


def test_the_next_unsharded_run_adopts_finished_and_unfinished_shards(clip_dir, pictures,
                                                                       tmp_path):
    out = tmp_path / "grid.h5"
    extractor = build_extractor("clip-grid", model=str(clip_dir), device="cpu")
    files = list_images(pictures)
    extract_to_file(extractor, files, out, batch_size=1, workers=0, progress=False,
                    shard=Shard(1, 3))
    shard = Shard(2, 3)
    writer = FeatureWriter(out, extraction_attributes(extractor), shard,
                           fingerprint(file.image_id for file in files))
    first = shard.take(files)[0]
    picture = Image.open(first.path).convert("RGB")
    writer.write_chunk({first.image_id: prepare_pictures(extractor, [picture])[0]},
                       {first.image_id: source_stamp(first.path)})       # then killed
    report = extract_to_file(extractor, files, out, batch_size=1, workers=0, progress=False)
    assert (report.skipped, report.written, report.images_in_file) == (2, 3, 5)
    assert sorted(path.name for path in tmp_path.glob("grid*")) == ["grid.h5"]
    extract_to_file(extractor, files, tmp_path / "whole.h5", batch_size=1, workers=0,
                    progress=False)
    assert_same_file(tmp_path / "whole.h5", out)


def test_bf16_extraction_is_close_to_fp32_and_recorded(clip_dir, pictures, tmp_path):
    features = {}
    for precision in ("fp32", "bf16"):
        extractor = build_extractor("clip-grid", model=str(clip_dir), device="cpu",
                                    precision=precision)
        out = tmp_path / f"{precision}.h5"
        extract_to_file(extractor, list_images(pictures), out, workers=0, progress=False)
        with h5py.File(out) as handle:
            features[precision] = handle["21_features"][()].astype(np.float32)
        assert features[precision].shape[1] == CLIP_HIDDEN
        assert read_attributes(out)["compute_dtype"] == {"fp32": "float32",
                                                         "bf16": "bfloat16"}[precision]
    difference = np.abs(features["bf16"] - features["fp32"]).max()
    assert 0 < difference < 0.05 * np.abs(features["fp32"]).max()


def test_precision_choices_are_checked(clip_dir):
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        build_extractor("clip-grid", model=str(clip_dir), device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="^extraction precision must be one of fp32, bf16, fp16, auto, "
                                          "got 'float32'$"):
        build_extractor("clip-grid", model=str(clip_dir), device="cpu", precision="float32")
    auto = build_extractor("clip-grid", model=str(clip_dir), device="cpu", precision="auto")
    assert auto.precision == resolve_precision("auto", torch.device("cpu"))


def test_detr_runs_in_bf16_on_cpu(tmp_path, pictures):
    detr_dir = write_tiny_detr(tmp_path / "detr")
    picture = Image.open(pictures / "COCO_val2014_000000000021.jpg").convert("RGB")
    entries = {}
    for precision in ("fp32", "bf16"):
        extractor = build_extractor("detr", model=str(detr_dir), revision=None, device="cpu",
                                    precision=precision, threshold=0.0, max_regions=DETR_QUERIES)
        assert extractor.attributes()["compute_dtype"] == {"fp32": "float32",
                                                           "bf16": "bfloat16"}[precision]
        entries[precision] = prepare_pictures(extractor, [picture])[0]
    assert entries["bf16"]["features"].shape == (DETR_QUERIES, DETR_D_MODEL)
    assert entries["bf16"]["features"].dtype == np.float16
    np.testing.assert_allclose(np.sort(entries["bf16"]["cls_prob"]),
                               np.sort(entries["fp32"]["cls_prob"]), atol=2e-2)
    assert not np.array_equal(entries["bf16"]["cls_prob"], entries["fp32"]["cls_prob"])
