"""Checkpoints: hin's own format, and the importer for the reference's published ones.

Our format is one `torch.save` dict: format tag, the model config, the weights and any
extra entries a caller adds (vocabulary, training state). It is written atomically and
read with `weights_only=True`, so loading never executes pickled code.

The reference's parameter names live only here, in `reference_name`. Imports are strict:
the only keys that may be absent from our model are the reference's decoding-state
buffers; anything else missing, unexpected or mis-shaped is an error naming the keys.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hin.config import HINConfig
from hin.errors import HINError
from hin.model import HIN

FORMAT = "hin-checkpoint"
FORMAT_VERSION = 1

REFERENCE_STATE_BUFFERS = frozenset(
    {"running_keys", "running_values", "running_seq", "running_mask_self_attention"})

# Our module/parameter name -> the reference's, one dotted component at a time.
_REFERENCE_COMPONENTS = {
    "grid_token": "cls_grid", "region_token": "cls_region",
    "grid_global": "global_grid", "region_global": "global_region",
    "region_asks_grid": "golbal_cls_grid", "grid_asks_region": "golbal_cls_region",
    "global_gate": "gate_golbal_cls", "global_norm": "middle_LN", "global_fc": "middle_fc.0",
    "grid_self": "self_grid", "region_self": "self_region",
    "grid_ff": "pwff_grid", "region_ff": "pwff_region",
    "attend_regions": "quer2att_region", "attend_grid": "quer2att_grid",
    "position_table": "pos_emb.weight", "head": "fc",
    "pick_direct": "self_cross_enc", "pick_crossed": "self_cross_enc_cross",
    "gate": "gate.0", "proj_direct": "proj1", "proj_crossed": "proj2", "ff": "pwff",
    "q_proj": "attention.fc_q", "k_proj": "attention.fc_k", "v_proj": "attention.fc_v",
    "out_proj": "attention.fc_o", "norm": "layer_norm",
}
_DECODER_LAYER_NORM = re.compile(r"^decoder\.layers\.\d+\.norm$")


def reference_name(name: str) -> str:
    """Our state-dict key -> the reference implementation's key."""
    parts = name.split(".")
    translated = []
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i + 1])
        if part == "norm" and _DECODER_LAYER_NORM.match(prefix):
            translated.append("lnorm2")
        else:
            translated.append(_REFERENCE_COMPONENTS.get(part, part))
    return ".".join(translated)


class CheckpointError(HINError, ValueError):
    """A checkpoint that cannot be used, with what is wrong and how to fix it."""


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for unreadable files
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'}); the file may be "
            f"truncated or corrupted, or not a checkpoint at all: copy or save it again") from error


def _reference_state_dict(source: dict[str, Any] | str | Path) -> dict[str, Tensor]:
    if isinstance(source, (str, Path)):
        source = _torch_load(Path(source))
    if not isinstance(source, dict):
        raise CheckpointError(f"expected a state_dict (a dict of tensors), got {type(source).__name__}")
    if "state_dict" in source and isinstance(source["state_dict"], dict):
        source = source["state_dict"]
    if source.get("format") == FORMAT:
        raise CheckpointError("this is already a hin checkpoint: use hin.checkpoint.load")
    return {k: v for k, v in source.items() if k.rpartition(".")[2] not in REFERENCE_STATE_BUFFERS}


def _infer_reference_config(state: dict[str, Tensor], num_heads: int) -> HINConfig:
    required = ["encoder.grid_proj.0.weight", "encoder.region_proj.0.weight",
                "encoder.layers.0.pwff_grid.fc1.weight", "decoder.word_emb.weight",
                "decoder.pos_emb.weight"]
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"not a reference HIN state_dict: missing {missing}")
    layers = {int(m.group(1)) for key in state if (m := re.match(r"encoder\.layers\.(\d+)\.", key))}
    grid_proj, region_proj = state["encoder.grid_proj.0.weight"], state["encoder.region_proj.0.weight"]
    return HINConfig(
        vocab_size=state["decoder.word_emb.weight"].shape[0],
        num_layers=len(layers),
        d_model=grid_proj.shape[0],
        num_heads=num_heads,
        d_ff=state["encoder.layers.0.pwff_grid.fc1.weight"].shape[0],
        max_len=state["decoder.pos_emb.weight"].shape[0] - 1,
        grid_dim=grid_proj.shape[1],
        region_dim=region_proj.shape[1],
    )


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)}: {shown}" + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def import_reference(source: dict[str, Any] | str | Path, num_heads: int = 8) -> HIN:
    """Build an HIN from a reference checkpoint (a state_dict, `{'state_dict': ...}`, or a
    .pth/.pt path holding either). The configuration is inferred from tensor shapes, except
    `num_heads`, which shapes cannot tell (the paper uses 8)."""
    state = _reference_state_dict(source)
    model = HIN(_infer_reference_config(state, num_heads))
    ours = model.state_dict()
    mapping = {reference_name(name): name for name in ours}
    missing = sorted(set(mapping) - set(state))
    unexpected = sorted(set(state) - set(mapping))
    mismatched = sorted(f"{key} {list(state[key].shape)} vs {list(ours[mapping[key]].shape)}"
                        for key in set(mapping) & set(state)
                        if state[key].shape != ours[mapping[key]].shape)
    problems = [f"missing keys ({_listing(missing)})" if missing else "",
                f"unexpected keys ({_listing(unexpected)})" if unexpected else "",
                f"shape mismatches ({_listing(mismatched)})" if mismatched else ""]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError("reference checkpoint does not match the HIN architecture: "
                              + "; ".join(problems))
    model.load_state_dict({ours_name: state[ref_name].float()
                           for ref_name, ours_name in mapping.items()})
    return model.eval()


def save(path: str | Path, model: HIN, **extra: Any) -> Path:
    """Write config + weights (+ `extra` entries) atomically: a crash never leaves a
    half-written file at `path`. Extra values must be tensors or plain Python data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "config": model.config.to_dict(), "model": model.state_dict(), "extra": extra}
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[HIN, dict[str, Any]]:
    """Read a hin checkpoint -> (model in eval mode, extra entries). Strict."""
    path = Path(path)
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        looks_reference = isinstance(payload, dict) and (
            "state_dict" in payload or any(str(k).startswith("encoder.") for k in payload))
        hint = (" It looks like a reference HIN checkpoint: convert it with "
                f"`hin import-checkpoint {path} out.pt --heads 8`." if looks_reference else "")
        raise CheckpointError(f"{path} is not a hin checkpoint.{hint}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version "
                              f"{payload.get('format_version')}; this hin reads {FORMAT_VERSION}")
    model = HIN(HINConfig.from_dict(payload["config"]))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match its config: {error}") from error
    return model.to(map_location).eval(), payload["extra"]
