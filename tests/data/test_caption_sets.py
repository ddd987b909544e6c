"""Karpathy's Flickr8k/Flickr30k files and nocaps' validation file (hin.data.caption_sets):
the hand-written fixtures in tests/fixtures/captions load with ids from `imgid` (nocaps: `id`)
and pictures by file name, train a step and are evaluated."""

from __future__ import annotations

import json
import shutil

import h5py
import pytest

from helpers.data_files import GRID_DIM, REGION_DIM, write_features
from helpers.paths import FIXTURES
from hin.cli import main
from hin.data.coco import load_splits
from hin.data.errors import DataError
from hin.extract.images import ImageListError, list_images
from hin.files import read_json
from hin.synth import IMAGES_DIR, generate

CAPTIONS = FIXTURES / "captions"
FLICKR = ["dataset_flickr8k.json", "dataset_flickr30k.json"]
NOCAPS = CAPTIONS / "nocaps_val_captions.json"


def test_flickr8k_reads_ids_from_imgid_and_keeps_file_names():
    splits = load_splits(CAPTIONS / "dataset_flickr8k.json")
    assert {name: split.image_ids for name, split in splits.items()} == {"train": [0, 1], "val": [2], "test": [3]}
    first = splits["train"].images[0]
    assert first.file_name == "1000268201_693b08cb0e.jpg"
    assert first.captions[1] == "A girl going into a wooden building ."


def test_flickr30k_reads_ids_from_imgid_not_from_file_names():
    splits = load_splits(CAPTIONS / "dataset_flickr30k.json")
    assert splits["val"].images[2].file_name == "1000268201.jpg"
    assert splits["test"].references() == {3: [
        "Someone in a blue shirt and hat is standing on stair and leaning against a window.",
        "A man on a ladder cleans the window of a tall building."]}


def test_nocaps_is_a_validation_split_for_evaluation():
    split = load_splits(NOCAPS, ["val"])["val"]
    assert split.image_ids == [0, 1, 2]
    assert split.images[1].file_name == "002099c3d88ff42e.jpg"
    assert split.references()[2] == ["A tortoise walking on the sand.",
                                     "A large turtle crawling across a beach."]
    with pytest.raises(DataError, match=r"nocaps' validation file: it holds the val split only "
                                        r"\(3 images\).*asked for train"):
        load_splits(NOCAPS, ["train", "val"])


@pytest.mark.parametrize("change, message", [
    (lambda image: image.pop("imgid"), r"image entry 0: 'imgid' is None, not an integer image id"),
    (lambda image: image.update(split="restval"), r"\(imgid 0\): split 'restval'; the Flickr split names"),
    (lambda image: image.update(filename=""), r"\(imgid 0\): 'filename' is '', not the picture's file name"),
    (lambda image: image["sentences"][0].update(raw=" "), r"\(imgid 0\): needs 'sentences' with a non-empty"),
])
def test_flickr_errors_name_the_entry(tmp_path, change, message):
    content = read_json(CAPTIONS / "dataset_flickr8k.json", "fixture")
    change(content["images"][0])
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message):
        load_splits(path)


def test_nocaps_errors_name_the_entry(tmp_path):
    content = read_json(NOCAPS, "fixture")
    content["annotations"][3]["image_id"] = 7
    path = tmp_path / "nocaps.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"annotation 3 \(image_id 7\) needs an image listed"):
        load_splits(path, ["val"])
    content = read_json(NOCAPS, "fixture")
    content["annotations"] = content["annotations"][:4]
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"images without captions: 1 \(first: \[2\]\)"):
        load_splits(path, ["val"])


def _tiny_run(annotations, features, vocabulary, run_dir):
    grid, region = features
    return [f"data.annotations={annotations}", f"data.grid_features={grid}",
            f"data.region_features={region}", f"data.vocabulary={vocabulary}", f"run_dir={run_dir}",
            "data.max_regions=4", "data.num_workers=0", "model.num_layers=1", "model.d_model=16",
            "model.num_heads=2", "model.d_ff=32", f"model.grid_dim={GRID_DIM}",
            f"model.region_dim={REGION_DIM}", "train.batch_size=2", "train.captions_per_image=1", "train.epochs=1",
            "train.val_full_metrics=false", "train.validation.beam_size=2",
            "train.validation.max_len=6", "train.device=cpu", "train.tensorboard=false"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FLICKR)
def test_flickr_and_nocaps_train_a_step_and_evaluate(tmp_path, name, capsys):
    annotations = CAPTIONS / name
    flickr = tmp_path / "flickr"
    flickr.mkdir()
    features = write_features(flickr, {image_id: 3 for image_id in range(4)})
    vocabulary = tmp_path / "vocab.json"
    assert main(["data", "vocab", "--annotations", str(annotations), "--min-freq", "1",
                 "--out", str(vocabulary)]) == 0
    assert main(["train", "--config", "synth_xe",
                 *_tiny_run(annotations, features, vocabulary, tmp_path / "run")]) == 0
    checkpoint = tmp_path / "run" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--split", "test", "--annotations",
                 str(annotations), "--grid", str(features[0]), "--region", str(features[1]),
                 "--workers", "0", "--no-spice", "--out", str(tmp_path / "eval")]) == 0
    assert [entry["image_id"] for entry in read_json(tmp_path / "eval" / "captions.json", "")] == [3]
    assert "CIDEr" in read_json(tmp_path / "eval" / "metrics.json", "")["scores"]
    nocaps = tmp_path / "nocaps"
    nocaps.mkdir()
    nocaps_features = write_features(nocaps, {image_id: 2 for image_id in range(3)}, seed=1)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--split", "val", "--annotations",
                 str(NOCAPS), "--grid", str(nocaps_features[0]), "--region", str(nocaps_features[1]),
                 "--workers", "0", "--no-spice", "--out", str(tmp_path / "nocaps_eval")]) == 0
    scored = read_json(tmp_path / "nocaps_eval" / "metrics.json", "")
    assert scored["num_images"] == 3 and "CIDEr" in scored["scores"]


def test_flickr_pictures_get_their_ids_from_the_caption_file(tmp_path, capsys):
    """Flickr8k names hold no id (`1000268201_693b08cb0e.jpg`): `--ids-from` gives each picture
    its `imgid`, so the features match the captions."""
    world = tmp_path / "world"
    generate(world, train=4, val=1, test=1, min_freq=1, progress=False)
    pictures = tmp_path / "Flicker8k_Dataset"
    pictures.mkdir()
    content = read_json(CAPTIONS / "dataset_flickr8k.json", "fixture")
    drawn = sorted((world / IMAGES_DIR).iterdir())
    for image, source in zip(content["images"], drawn):
        shutil.copyfile(source, pictures / image["filename"])
    out = tmp_path / "grid.h5"
    command = ["extract", "grid", "--extractor", "synth-grid", "--images", str(pictures), "--out", str(out),
               "--workers", "0"]
    assert main(command) == 2
    assert "cannot read an image id from '1000268201_693b08cb0e'" in capsys.readouterr().err
    assert main([*command, "--ids-from", str(CAPTIONS / "dataset_flickr8k.json")]) == 0
    with h5py.File(out) as features:
        assert {int(name.split("_")[0]) for name in features} == {0, 1, 2, 3}
    shutil.copyfile(drawn[0], pictures / "stray.jpg")
    assert main([*command, "--ids-from", str(CAPTIONS / "dataset_flickr8k.json")]) == 2
    assert "1 picture(s) are not named in" in capsys.readouterr().err


def test_two_pictures_given_one_id_by_the_caption_file_are_refused(tmp_path):
    """Two copies of one Flickr picture in different folders both get its `imgid` from
    `--ids-from`: refused as two pictures with one id, as names that give one id are."""
    content = read_json(CAPTIONS / "dataset_flickr8k.json", "fixture")
    name = content["images"][0]["filename"]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    listed = tmp_path / "pictures.txt"
    listed.write_text(f"a/{name}\nb/{name}\n")
    with pytest.raises(ImageListError, match=r"both give image id 0"):
        list_images(listed, ids_from=CAPTIONS / "dataset_flickr8k.json")
