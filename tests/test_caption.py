"""`hin caption` / `hin.Captioner`: precomputed features and pictures, end to end on tiny
checkpoints, and clear refusals when a checkpoint's features cannot be made from pictures.

The features-path checkpoint is a tiny HIN briefly fitted here (40 Adam steps, teacher forcing
through `model.decode`) on the synthetic dataset's features: enough to caption above chance in
a second, where a `hin train` run would take far longer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hin
from helpers.extract_models import tiny_hin_config, write_picture_checkpoint, write_pictures
from hin.checkpoint import CheckpointError, load, save
from hin.cli import main
from hin.config import DecodingConfig
from hin.data.coco import load_split
from hin.data.dataset import CaptionPairs, make_loader
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary, VocabularyError
from hin.decoding import decode
from hin.devices import resolve_precision
from hin.errors import HINError
from hin.extract import (
    image_id_from_name,
    read_attributes,
)
from hin.extract.shapes import GRID_DIM, REGION_DIM
from hin.model import HIN
from hin.synth import generate

pytest.importorskip("transformers")

PICTURES = {"COCO_val2014_000000000011.jpg": (40, 60), "12.png": (50, 30), "13.jpg": (32, 32)}


@pytest.fixture(scope="module")
def synth_checkpoint(tmp_path_factory):
    """A tiny HIN fitted for 40 Adam steps on the synthetic training split's features."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, train=40, val=5, test=5, min_freq=1, progress=False)
    vocab = Vocabulary.load(root / "vocab.json")
    store = FeatureStore(root / "grid.hdf5", root / "region.hdf5", max_regions=50,
                         grid_dim=GRID_DIM, region_dim=REGION_DIM)
    pairs = CaptionPairs(load_split(root, "train"), store, vocab, max_len=20)
    torch.manual_seed(0)
    model = HIN(tiny_hin_config(len(vocab), GRID_DIM, REGION_DIM))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _, batch in zip(range(40), _forever(make_loader(pairs, 50, shuffle=True))):
        logprobs = model.decode(batch.tokens[:, :-1], model.encode(batch.grid, batch.region))
        loss = torch.nn.functional.nll_loss(logprobs.flatten(0, 1), batch.tokens[:, 1:].flatten(),
                                            ignore_index=vocab.pad_id)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    store.close()
    features = {"grid": read_attributes(root / "grid.hdf5"),
                "region": read_attributes(root / "region.hdf5")}
    checkpoint = save(root / "tiny.pt", model.eval(), vocabulary=vocab.to_dict(),
                      features=features)
    return checkpoint, root


def _forever(loader):
    while True:
        yield from loader


@pytest.fixture(scope="module")
def picture_setup(tmp_path_factory):
    """Tiny CLIP + DETR, their features of three pictures, and a tiny HIN recording them."""
    root = tmp_path_factory.mktemp("pictures")
    checkpoint, model, vocab = write_picture_checkpoint(root, PICTURES)
    return checkpoint, root, model, vocab


def test_caption_precomputed_features_equals_beam_search(synth_checkpoint, capsys):
    checkpoint, root = synth_checkpoint
    ids = [100001, 100002, 100003]
    assert main(["caption", "--checkpoint", str(checkpoint), "--grid", str(root / "grid.hdf5"),
                 "--region", str(root / "region.hdf5"), "--ids", *map(str, ids), "--top-k", "2",
                 "--beam", "3", "--json", "--keep-repeats"]) == 0
    printed = json.loads(capsys.readouterr().out)

    model, extra = load(checkpoint)
    vocab = Vocabulary.from_dict(extra["vocabulary"])
    store = FeatureStore(root / "grid.hdf5", root / "region.hdf5", grid_dim=GRID_DIM,
                         region_dim=REGION_DIM)
    grid = torch.from_numpy(np.stack([store[i][0] for i in ids])).float()
    region = torch.from_numpy(np.stack([store[i][1] for i in ids])).float()
    sequences, logprobs = decode(model, grid, region, DecodingConfig(beam_size=3, max_len=20,
                                                                            num_captions=2))
    assert [entry["image"] for entry in printed] == [str(i) for i in ids]
    for entry, hypotheses, scores in zip(printed, sequences, logprobs.sum(-1)):
        assert [c["caption"] for c in entry["captions"]] == [vocab.decode(h) for h in hypotheses]
        assert [c["log_prob"] for c in entry["captions"]] == pytest.approx(scores.tolist(),
                                                                          abs=1e-4)
        assert entry["captions"][0]["log_prob"] >= entry["captions"][1]["log_prob"]
        assert len(entry["captions"][0]["caption"].split()) >= 2


def test_captioner_decodes_bf16_with_one_cast_copy_and_keeps_its_fp32_model(synth_checkpoint):
    checkpoint, _ = synth_checkpoint
    captioner = hin.Captioner(checkpoint, device="cpu", decoding=DecodingConfig(precision="bf16"))
    picture = captioner.batch([np.ones((4, captioner.model.config.grid_dim), np.float32)],
                              [np.ones((3, captioner.model.config.region_dim), np.float32)])
    captioner.caption_batch(*picture, ["a"])
    (cast,) = captioner.ensemble.cast("bf16")
    assert cast.dtype == torch.bfloat16 and captioner.model.dtype == torch.float32
    captioner.caption_batch(*picture, ["a"])
    assert captioner.ensemble.cast("bf16")[0] is cast                 # cast once, then kept
    assert captioner.ensemble.cast("fp32") == (captioner.model,)
    auto = resolve_precision("auto", torch.device("cpu"))
    assert captioner.ensemble.cast("auto") is captioner.ensemble.cast(auto)


def test_caption_refuses_a_vocab_that_differs_from_the_recorded_one(synth_checkpoint, tmp_path,
                                                                    capsys):
    checkpoint, root = synth_checkpoint
    vocab = Vocabulary.load(root / "vocab.json")
    words = list(vocab.words)
    words[5], words[6] = words[6], words[5]       # right size, another word order
    Vocabulary(words, vocab.counts).save(tmp_path / "swapped.json")
    assert main(["caption", "--checkpoint", str(checkpoint), "--grid", str(root / "grid.hdf5"),
                 "--region", str(root / "region.hdf5"), "--ids", "100001",
                 "--vocab", str(tmp_path / "swapped.json")]) == 2
    assert capsys.readouterr().err == (
        f"hin caption: error: the vocabulary {tmp_path / 'swapped.json'} differs from the one "
        f"recorded in {checkpoint} at entry 5: {words[5]!r} instead of {words[6]!r}; the recorded "
        "vocabulary is used by default: leave out --vocab\n")
    assert main(["caption", "--checkpoint", str(checkpoint), "--grid", str(root / "grid.hdf5"),
                 "--region", str(root / "region.hdf5"), "--ids", "100001",
                 "--vocab", str(root / "vocab.json")]) == 0


def test_caption_missing_feature_entry_names_the_id(synth_checkpoint, capsys):
    checkpoint, root = synth_checkpoint
    assert main(["caption", "--checkpoint", str(checkpoint), "--grid", str(root / "grid.hdf5"),
                 "--region", str(root / "region.hdf5"), "--ids", "5"]) == 2
    assert "image 5 has no '5_features' entry" in capsys.readouterr().err


def test_pictures_with_a_checkpoint_trained_on_unrecorded_features_are_refused(
        synth_checkpoint, tmp_path):
    model, extra = load(synth_checkpoint[0])
    checkpoint = save(tmp_path / "unrecorded.pt", model, vocabulary=extra["vocabulary"])
    picture = write_pictures(tmp_path, {"1.png": (20, 20)}) / "1.png"
    with pytest.raises(CheckpointError, match=r"trained on grid features that were not made by "
                                              r"`hin extract`.*--grid grid.h5 --region"):
        hin.Captioner(checkpoint)(picture)


def test_caption_pictures_matches_captioning_their_extracted_features(picture_setup, capsys):
    checkpoint, root, _, _ = picture_setup
    pictures = [str(path) for path in sorted((root / "pictures").iterdir())]
    assert main(["caption", *pictures, "--checkpoint", str(checkpoint), "--top-k", "3",
                 "--json"]) == 0
    from_pictures = json.loads(capsys.readouterr().out)
    assert main(["caption", "--checkpoint", str(checkpoint), "--grid", str(root / "grid.h5"),
                 "--region", str(root / "region.h5"), "--ids", "11", "12", "13", "--top-k", "3",
                 "--json"]) == 0
    from_features = json.loads(capsys.readouterr().out)
    assert [entry["image"] for entry in from_pictures] == pictures
    assert [len(entry["captions"]) for entry in from_pictures] == [3, 3, 3]
    by_id = {int(entry["image"]): entry["captions"] for entry in from_features}
    for picture, entry in zip(pictures, from_pictures):
        assert entry["captions"] == by_id[image_id_from_name(Path(picture).stem)]


def test_captioner_in_three_lines_and_text_output(picture_setup):
    checkpoint, root, _, vocab = picture_setup
    captioner = hin.Captioner(checkpoint, decoding=DecodingConfig(beam_size=2, num_captions=2))
    result = captioner(root / "pictures" / "12.png")[0]
    assert result.source.endswith("12.png") and len(result.captions) == 2
    best, second = result.captions
    assert best.log_prob >= second.log_prob and best.text != second.text
    text = str(result).splitlines()
    assert text[0].endswith("12.png")
    assert text[1:] == [f"  {rank}. {c.text}  (log-prob {c.log_prob:.2f})"
                        for rank, c in enumerate(result.captions, start=1)]


def test_vinvl_checkpoint_says_what_to_pass_instead(picture_setup, tmp_path):
    _, root, model, vocab = picture_setup
    features = {"grid": read_attributes(root / "grid.h5"),
                "region": {"extractor": "vinvl-tsv", "feature_dim": 2048}}
    checkpoint = save(tmp_path / "vinvl.pt", model, vocabulary=vocab.to_dict(), features=features)
    with pytest.raises(CheckpointError, match=r"trained on VinVL region features imported from "
                                              r"VinVL's TSV files.*--extractor vinvl-x152c4"):
        hin.Captioner(checkpoint)(root / "pictures" / "12.png")


def test_inconsistent_checkpoint_and_missing_vocabulary_are_refused(picture_setup, tmp_path):
    _, root, model, vocab = picture_setup
    swapped = {"grid": read_attributes(root / "region.h5"),
               "region": read_attributes(root / "region.h5")}
    checkpoint = save(tmp_path / "bad.pt", model, vocabulary=vocab.to_dict(), features=swapped)
    with pytest.raises(CheckpointError, match=r"expects grid features of size 32, but its "
                                              r"recorded grid extractor 'detr'"):
        hin.Captioner(checkpoint)(root / "pictures" / "12.png")
    bare = save(tmp_path / "bare.pt", model)
    with pytest.raises(VocabularyError, match=r"carries no vocabulary; pass the one it was "
                                              r"trained with"):
        hin.Captioner(bare)


def test_pictures_that_cannot_be_read_are_listed_after_the_captions_of_the_others(
        picture_setup, tmp_path, capsys):
    """A folder (or several files) is captioned as far as it can be read; every failure is
    listed at the end, and the exit status says some failed (as `hin extract`'s)."""
    checkpoint, root, _, _ = picture_setup
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = root / "pictures" / "COCO_val2014_000000000011.jpg"
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "broken.jpg").write_bytes(b"no picture here")
    (folder / "cut.png").write_bytes((root / "pictures" / "12.png").read_bytes()[:60])
    (folder / "notes.txt").write_text("not a picture")
    assert main(["caption", str(folder), "--checkpoint", str(checkpoint)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(str(folder / good.name)) and len(out.strip().splitlines()) == 2
    assert "Traceback" not in err
    assert "hin caption: note: " + str(folder) + ": skipped 1 entries not named like pictures" in err
    assert "notes.txt" in err
    assert "2 of 3 pictures could not be read" in err
    assert f"  {folder / 'broken.jpg'}: not a picture in a format hin reads" in err
    assert f"  {folder / 'cut.png'}: cannot be decoded" in err


def test_picture_over_the_pixel_limit_is_one_line(picture_setup, monkeypatch, capsys):
    checkpoint, root, _, _ = picture_setup
    monkeypatch.setenv("HIN_MAX_PIXELS", "2000")      # the 60x40 picture has 2400
    picture = root / "pictures" / "COCO_val2014_000000000011.jpg"
    assert main(["caption", "--checkpoint", str(checkpoint), str(picture)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]          # above it: transformers' weight-loading bars
    assert "Traceback" not in err and "1 of 1 pictures could not be read" in err
    assert last.startswith(f"  {picture}: 60x40 is 2,400 pixels, over the limit of 2,000")
    assert "HIN_MAX_PIXELS=2400" in last


def test_caption_cli_samples_reproducibly_by_seed_and_refuses_bad_options_in_one_line(
        synth_checkpoint, capsys):
    checkpoint, root = synth_checkpoint
    features = ["--checkpoint", str(checkpoint), "--grid", str(root / "grid.hdf5"),
                "--region", str(root / "region.hdf5"), "--ids", "100001", "100002", "--json"]
    sampled = []
    for seed in ("3", "3", "4"):
        assert main(["caption", *features, "--sample", "--num-captions", "4", "--temperature", "1.5",
                     "--seed", seed]) == 0
        sampled.append(json.loads(capsys.readouterr().out))
    assert sampled[0] == sampled[1] != sampled[2]
    assert [len(entry["captions"]) for entry in sampled[0]] == [4, 4]
    for flags, words in ((["--top-p", "2"], "--top-p must be in (0, 1]"),
                         (["--diversity-groups", "2"], "--diversity-groups (2) must divide the beam size (5)"),
                         (["--min-len", "20"], "--min-len (20) must be below --max-len (20)")):
        assert main(["caption", *features, *flags]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and words in err


def test_captioner_takes_pixels_and_bytes_by_the_reading_rule_and_refuses_the_rest_by_name(picture_setup):
    checkpoint, root, _, _ = picture_setup
    captioner = hin.Captioner(checkpoint)
    path = root / "pictures" / "12.png"
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert captioner(pixels)[0].captions == captioner(path)[0].captions
    assert captioner(path.read_bytes())[0].captions == captioner(path)[0].captions
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"      # bytes read by hin's formats only
    with pytest.raises(HINError, match=r"picture 1: its format is EPS/PostScript, which hin does not read"):
        captioner(eps)
    with pytest.raises(HINError, match="a picture given as a numpy array must hold uint8 pixels"):
        captioner(pixels.astype(np.float32))
    with pytest.raises(HINError, match="each picture must be a path, a file's bytes, a PIL image or a numpy array"):
        captioner([path, 12])
    # a listing captions what it can and says why the rest cannot be read (arrays by position)
    done = captioner.caption_readable([pixels, pixels.astype(np.float32), 12, path])
    assert [result.source for result in done.results] == ["picture 1", str(path)]
    assert len(done.failed) == 2
    assert done.failed[0].startswith("picture 2: a picture given as a numpy array must hold uint8")
    assert done.failed[1].startswith("12: each picture must be a path")
    with pytest.raises(HINError, match="names gives 1 names for 2 images"):
        captioner.caption_batch(*captioner.batch([np.ones((4, captioner.model.config.grid_dim))] * 2,
                                                 [np.ones((3, captioner.model.config.region_dim))] * 2),
                                ["one"])
