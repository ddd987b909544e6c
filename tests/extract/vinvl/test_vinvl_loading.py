"""Loading VinVL's weights: the published layout (841 keys on the meta device, full size), the
accepted wrappers, the attribute head's alias keys, and one-line refusals naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.paths import FIXTURES
from hin.errors import HINError
from hin.extract.vinvl.backbone import VinVLShape
from hin.extract.vinvl.loading import (
    VinVLWeightsError,
    VinVLWeightsMissing,
    build_on_meta,
    load_detector,
)

VINVL = FIXTURES / "vinvl"
WEIGHTS = VINVL / "vinvl_x152c4_small.pth"
ALIAS = "attribute.feature_extractor."
BOX = "roi_heads.box.feature_extractor."


@pytest.fixture(scope="module")
def published():
    return torch.load(WEIGHTS, weights_only=True)


def test_full_size_model_has_the_published_keys_and_shapes_in_order():
    listed = json.loads((VINVL / "vinvl_vg_x152c4_full_keys.json").read_text())
    model = build_on_meta(VinVLShape())
    state = model.state_dict()
    assert [(key, list(value.shape)) for key, value in state.items()] == [
        (entry["key"], entry["shape"]) for entry in listed["keys"]]
    assert all(value.is_meta for value in state.values())
    aliases = {entry["key"]: entry["same_tensor_as"] for entry in listed["keys"]
               if "same_tensor_as" in entry}
    assert len(aliases) == listed["num_alias_keys"] == 50
    tensors = {**dict(model.named_parameters(remove_duplicate=False)),
               **dict(model.named_buffers(remove_duplicate=False))}
    assert tensors.keys() == state.keys()
    assert all(tensors[alias] is tensors[source] for alias, source in aliases.items())
    unique = {id(value): value.numel() for value in tensors.values()}
    assert sum(unique.values()) == listed["unique_float32_values"]
    assert model.shape.feature_dim == 2048


def test_published_layout_loads_every_tensor(published):
    model = load_detector(WEIGHTS)
    state = model.state_dict()
    assert len(published) == 841 and all(key.startswith("module.") for key in published)
    for key, value in published.items():
        assert torch.equal(state[key.removeprefix("module.")], value), key
    assert not any(value.is_meta for value in state.values())
    assert model.shape == VinVLShape(width_per_group=1, stem_out=16, res2_out=8,
                                     class_embedding=16, attribute_hidden=32)


def _save(tmp_path: Path, payload: object, name: str = "w.pth") -> Path:
    path = tmp_path / name
    torch.save(payload, path)
    return path


def _same(model: torch.nn.Module, reference: torch.nn.Module) -> bool:
    ours, theirs = model.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("form", ["model-wrapper", "unprefixed", "no-aliases"])
def test_accepted_forms(tmp_path, published, form):
    bare = {key.removeprefix("module."): value for key, value in published.items()}
    payload = {"model": dict(published), "iteration": 7} if form == "model-wrapper" else (
        bare if form == "unprefixed" else
        {key: value for key, value in bare.items() if not key.startswith(ALIAS)})
    assert _same(load_detector(_save(tmp_path, payload)), load_detector(WEIGHTS))


def _refusal(tmp_path: Path, payload: object) -> str:
    with pytest.raises(VinVLWeightsError) as caught:
        load_detector(_save(tmp_path, payload))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    return message


def test_missing_key_is_named(tmp_path, published):
    payload = dict(published)
    del payload["module.rpn.head.bbox_pred.bias"]
    assert "missing key 'rpn.head.bbox_pred.bias'" in _refusal(tmp_path, payload)


def test_unexpected_key_is_named(tmp_path, published):
    payload = {**published, "module.roi_heads.box.feature_extractor.trans_conv.weight":
               torch.zeros(1)}
    message = _refusal(tmp_path, payload)
    assert "unexpected key 'roi_heads.box.feature_extractor.trans_conv.weight'" in message


def test_partly_prefixed_keys_are_refused(tmp_path, published):
    payload = dict(published)
    payload["rpn.head.conv.bias"] = payload.pop("module.rpn.head.conv.bias")
    assert "missing key 'backbone.body.layer1.0.conv2.weight'" in _refusal(tmp_path, payload)


def test_wrong_shape_is_named(tmp_path, published):
    payload = dict(published)
    payload["module.rpn.head.conv.bias"] = torch.zeros(5)
    assert "'rpn.head.conv.bias' has shape [5]" in _refusal(tmp_path, payload)


def test_alias_with_other_values_is_refused(tmp_path, published):
    payload = {key: value.clone() for key, value in published.items()}
    payload["module." + ALIAS + "head.layer4.2.bn3.bias"] += 1
    assert ALIAS + "head.layer4.2.bn3.bias" in _refusal(tmp_path, payload)


def test_other_objects_are_refused(tmp_path):
    assert "neither a state dict" in _refusal(tmp_path, [torch.zeros(2)])
    assert "neither a state dict" in _refusal(tmp_path, {"model": {"a": 1}})
    assert "missing key 'backbone.body.layer1.0.conv2.weight'" in _refusal(
        tmp_path, {"weight": torch.zeros(2)})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(VinVLWeightsError, match="not a readable PyTorch weights file"):
        load_detector(garbage)


def test_missing_file_says_which_and_where(tmp_path):
    with pytest.raises(VinVLWeightsMissing) as caught:
        load_detector(tmp_path / "vinvl_vg_x152c4.pth")
    message = str(caught.value)
    assert isinstance(caught.value, HINError) and "\n" not in message
    assert str(tmp_path / "vinvl_vg_x152c4.pth") in message and "593 MB" in message
    assert "--weights" in message
