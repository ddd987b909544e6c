"""Loading VinVL's published detector weights (`vinvl_vg_x152c4.pth`, 593 MB), strictly.

The file is read with `torch.load(weights_only=True)` (no code runs) and never downloaded:
the user passes it. Accepted: a bare state dict (as published, every key prefixed with
`module.`, which is removed when every key has it), the same unprefixed, or `{"model": state
dict}` (what the original's own checkpointer writes). The widths are read off the tensors
(the published model's, or the golden fixtures' small-width one); the model is built on the
meta device and the tensors are assigned to it, so no second copy is made. Every key must
match, shape included: the first missing or unexpected key is named. The attribute head's
`attribute.feature_extractor.*` keys are aliases of `roi_heads.box.feature_extractor.*`
(the original shares the module): when present they must hold the same values, when absent
they are taken from the box head.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from hin.errors import HINError
from hin.extract.vinvl.backbone import VinVLShape
from hin.extract.vinvl.detector import VinVLDetector

WEIGHTS_FILE = "vinvl_vg_x152c4.pth"
WEIGHTS_SIZE = "593 MB"
WEIGHTS_URL = ("https://penzhanwu2.blob.core.windows.net/sgg/sgg_benchmark/vinvl_model_zoo/"
               "vinvl_vg_x152c4.pth")
PREFIX = "module."
BOX_EXTRACTOR = "roi_heads.box.feature_extractor."
ATTRIBUTE_ALIAS = "attribute.feature_extractor."


class VinVLWeightsError(HINError, ValueError):
    """A weights file that is not VinVL X152-C4's state dict."""


class VinVLWeightsMissing(HINError, FileNotFoundError):
    """The weights file is not where it was said to be."""


def missing_weights_message(path: str | Path) -> str:
    return (f"VinVL detector weights not found at {path}: hin never downloads them; get "
            f"{WEIGHTS_FILE} ({WEIGHTS_SIZE}, published by the authors at {WEIGHTS_URL}) and "
            "pass its path with --weights (or weights=PATH)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, unwrapped and without the `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise VinVLWeightsMissing(missing_weights_message(path))
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as error:
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise VinVLWeightsError(f"{path} is not a readable PyTorch weights file ({reason}); "
                                f"expected {WEIGHTS_FILE}") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not loaded or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor)
            for key, value in loaded.items()):
        raise VinVLWeightsError(f"{path} holds neither a state dict nor {{'model': state dict}}; "
                                f"expected VinVL's {WEIGHTS_FILE}")
    if all(key.startswith(PREFIX) for key in loaded):
        loaded = {key[len(PREFIX):]: value for key, value in loaded.items()}
    return dict(loaded)


def infer_shape(state: dict[str, torch.Tensor], path: str | Path) -> VinVLShape:
    """The model widths, read off the tensors that carry them."""
    def size(key: str, dim: int) -> int:
        if key not in state:
            raise VinVLWeightsError(f"{path} is not a VinVL X152-C4 state dict: missing key "
                                    f"{key!r}")
        return int(state[key].shape[dim])

    per_group = size("backbone.body.layer1.0.conv2.weight", 1)
    return VinVLShape(
        num_groups=size("backbone.body.layer1.0.conv2.weight", 0) // per_group,
        width_per_group=per_group,
        stem_out=size("backbone.body.stem.conv1.weight", 0),
        res2_out=size("backbone.body.layer1.0.conv3.weight", 0),
        num_classes=size("roi_heads.box.predictor.cls_score.weight", 0),
        num_attributes=size("attribute.predictor.attr_score.weight", 0),
        class_embedding=size("attribute.predictor.cls_embedding.weight", 1),
        attribute_hidden=size("attribute.predictor.fc_attr.weight", 0))


def _resolve_aliases(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Fill absent attribute-head aliases from the box head; refuse ones that differ."""
    for key in [key for key in state if key.startswith(BOX_EXTRACTOR)]:
        alias = ATTRIBUTE_ALIAS + key[len(BOX_EXTRACTOR):]
        if alias not in state:
            state[alias] = state[key]
        elif not (state[alias].shape == state[key].shape and torch.equal(state[alias], state[key])):
            raise VinVLWeightsError(f"{path}: {alias!r} differs from {key!r}; VinVL's attribute "
                                    "head shares the box head's feature extractor")


def check_keys(expected: dict[str, torch.Size], state: dict[str, torch.Tensor],
               path: str | Path) -> None:
    """Strict: the same keys and shapes as the model; the first difference is named."""
    missing = [key for key in expected if key not in state]
    if missing:
        raise VinVLWeightsError(f"{path} is not a VinVL X152-C4 state dict: missing key "
                                f"{missing[0]!r} ({len(missing)} missing)")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise VinVLWeightsError(f"{path} is not a VinVL X152-C4 state dict: unexpected key "
                                f"{unexpected[0]!r} ({len(unexpected)} unexpected)")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise VinVLWeightsError(f"{path}: {key!r} has shape {list(state[key].shape)}, the "
                                    f"model expects {list(shape)}")


def build_on_meta(shape: VinVLShape) -> VinVLDetector:
    """The model's structure without memory (full size: 148M values)."""
    with torch.device("meta"):
        return VinVLDetector(shape)


def load_detector(path: str | Path, device: torch.device | str = "cpu") -> VinVLDetector:
    """The detector with the weights of `path`, in eval mode, on `device`."""
    state = read_state_dict(path)
    shape = infer_shape(state, path)
    model = build_on_meta(shape)
    _resolve_aliases(state, path)
    check_keys({key: value.shape for key, value in model.state_dict().items()}, state, path)
    state = {key: value.float() for key, value in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()
