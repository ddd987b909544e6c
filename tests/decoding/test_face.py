"""hin.decoding's face: the renamed entry points (and their deprecated old names), settings
checked and models cast once, the one rule for a hypothesis's words, and what the Python API
accepts (numpy arrays) and refuses (with a HINError naming the argument)."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hin
import hin.decoding.ensemble
from helpers.tiny import tiny_features, tiny_model
from hin.config import DecodingConfig
from hin.data.vocab import Vocabulary
from hin.decoding import (
    Caption,
    Ensemble,
    EnsembleStepper,
    beam_search,
    beam_search_encoded,
    beam_search_steps,
    caption,
    caption_batches,
    decode,
    decode_encoded,
    hypothesis_ids,
    search,
)
from hin.decoding.captions import make_caption
from hin.errors import HINError

SETTINGS = DecodingConfig(beam_size=3, max_len=8, num_captions=2)


def vocabulary(size=20):
    words = ["<unk>", "<pad>", "<bos>", "<eos>", *(f"w{i}" for i in range(size - 4))]
    return Vocabulary(words, [0] * 4 + [1] * (size - 4))


def equal(first, second):
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_old_names_warn_and_give_the_same_results():
    model = tiny_model()
    grid, region = tiny_features()
    with pytest.warns(DeprecationWarning, match=r"beam_search is deprecated.*hin\.decoding\.decode"):
        assert equal(beam_search(model, grid, region, SETTINGS), decode(model, grid, region, SETTINGS))
    encoded = model.eval().encode(grid, region)
    with pytest.warns(DeprecationWarning, match="use hin.decoding.decode_encoded"):
        old = beam_search_encoded(model, encoded, SETTINGS)
    assert equal(old, decode_encoded(model, encoded, SETTINGS))
    with torch.inference_mode(), pytest.warns(DeprecationWarning, match="use hin.decoding.search"):
        old = beam_search_steps(EnsembleStepper([model], [encoded]), 2, model.config, grid.device,
                                SETTINGS)
    with torch.inference_mode():
        new = search(EnsembleStepper([model], [encoded]), 2, model.config, grid.device, SETTINGS)
    assert equal(old, new)


def test_caption_batches_checks_the_settings_and_casts_the_models_once(monkeypatch):
    checked, copied = [], []
    real_check = hin.decoding.ensemble.require_decodable
    monkeypatch.setattr(hin.decoding.ensemble, "require_decodable",
                        lambda *args: checked.append(args) or real_check(*args))
    monkeypatch.setattr(hin.decoding.ensemble, "copy", SimpleNamespace(
        deepcopy=lambda model: copied.append(model) or copy.deepcopy(model)))
    model = tiny_model()
    grid, region = tiny_features(batch=2)
    batches = [SimpleNamespace(grid=grid, region=region, image_ids=[2 * i, 2 * i + 1])
               for i in range(3)]
    settings = DecodingConfig(beam_size=3, max_len=6, precision="bf16")
    captioned = caption_batches(model, batches, vocabulary(), settings, progress=False)
    assert sorted(captioned) == list(range(6))
    assert len(checked) == 1 and len(copied) == 1
    ensemble = Ensemble(model)          # kept across calls: a server's requests share one copy
    for _ in range(2):
        caption(ensemble, grid, region, vocabulary(), settings)
    assert len(checked) == 2 and len(copied) == 2


def test_a_hypothesis_words_are_its_ids_before_eos_and_its_text_leaves_specials_out():
    assert hypothesis_ids([5, 1, 6, 3, 1, 1], eos_id=3) == (5, 1, 6)
    assert hypothesis_ids([5, 6], eos_id=3) == (5, 6)
    made = make_caption([4, 1, 5, 5, 3, 1], -2.5, vocabulary(), DecodingConfig())
    assert made == Caption("w0 w1", -2.5, (4, 1, 5, 5), ("w0", "<pad>", "w1", "w1"))
    kept = make_caption([4, 5, 5, 3], -1.0, vocabulary(), DecodingConfig(collapse_repeats=False))
    assert kept.text == "w0 w1 w1" and kept.words == ("w0", "w1", "w1")


def test_numpy_features_decode_as_tensors_do():
    model = tiny_model()
    grid, region = tiny_features()
    assert equal(decode(model, grid.numpy(), region.numpy().astype(np.float64), SETTINGS),
                 decode(model, grid, region, SETTINGS))
    assert equal(model.eval().encode(grid.numpy(), region.numpy()).grid[None],
                 model.encode(grid, region).grid[None])


@pytest.mark.parametrize("argument, value, message", [
    ("grid", b"\x00" * 64, r"grid features must be a torch tensor or a numpy array .* got bytes"),
    ("region", [[0.0]], r"region features must be .* got list"),
    ("grid", np.array([["a"]]), r"grid features must be .* numpy array of <U1"),
    ("region", "nan", r"region features of image 1 .* NaN or infinite"),
    ("grid", "shape", r"grid features must be \[batch, tokens, 12\] .* got shape \[2, 9\]"),
])
def test_features_that_cannot_be_read_are_refused_by_name(argument, value, message):
    model = tiny_model()
    features = dict(zip(("grid", "region"), tiny_features()))
    if value == "nan":
        value = features[argument].clone()
        value[1, 2, 3] = float("nan")
    elif value == "shape":
        value = features[argument][..., 0]
    features[argument] = value
    with pytest.raises(HINError, match=message):
        decode(model, features["grid"], features["region"], SETTINGS)
    with pytest.raises(HINError, match=message):
        model.encode(features["grid"], features["region"])


def test_names_and_words_that_do_not_fit_are_refused_by_name():
    model = tiny_model()
    grid, region = tiny_features()
    with pytest.raises(HINError, match="names gives 3 names for 2 images"):
        caption(model, grid, region, vocabulary(), SETTINGS, names=["a", "b", "c"])
    with pytest.raises(HINError, match="names must be a list with one name per image, got str"):
        caption(model, grid, region, vocabulary(), SETTINGS, names="ab")
    with pytest.raises(HINError, match=r"words: a vocabulary of 25 words .* for a model of 20"):
        caption(model, grid, region, vocabulary(25), SETTINGS)
    with pytest.raises(HINError, match="words must be a hin.data.vocab.Vocabulary"):
        caption(model, grid, region, {"w": 1}, SETTINGS)
    with pytest.raises(HINError, match="decoding needs a HIN model"):
        decode("model.pt", grid, region, SETTINGS)


def test_token_ids_beyond_the_vocabulary_are_refused():
    model = tiny_model()
    encoded = model.encode(*tiny_features())
    with pytest.raises(HINError, match=r"tokens must be ids from 0 to 19 .* got 2 to 20"):
        model.decode(torch.tensor([[2, 20], [2, 5]]), encoded)
    with pytest.raises(HINError, match="tokens must be an integer tensor"):
        model.decode(torch.tensor([[2.0, 5.0]] * 2), encoded)
