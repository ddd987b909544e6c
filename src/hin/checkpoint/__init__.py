"""Checkpoints: hin's own format, and the importer for the reference's published ones.

Our format is one `torch.save` dict: format tag, the model config, the weights and any
extra entries a caller adds (vocabulary, training state). It is written atomically and
read with `weights_only=True`, so loading never executes pickled code. The only objects
beyond tensors and plain Python data that a checkpoint may hold are numpy arrays, dtypes and
scalars, and an argparse namespace: the reference's training script saves
`np.random.get_state()` and numpy floats in its published checkpoints, and training scripts
save their arguments so. A file that pickles anything else is refused, naming what it
pickles.

Models are built on the meta device and given the loaded tensors, so loading never spends
time on a random initialisation that is thrown away.

The reference's parameter names live only here, in `reference_name`. Imports are strict:
the only keys that may be absent from our model are the reference's decoding-state
buffers; anything else missing, unexpected or mis-shaped is an error naming the keys.

Beside this module: `record` (what the extra entries are, typed), `opening` (checkpoints
opened for decoding) and `verify` (an import's head count checked).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from torch import Tensor

from hin.checkpoint.record import CheckpointRecord
from hin.config import DataConfig, HINConfig, upgrade_legacy
from hin.errors import HINError, UsageError
from hin.files import atomic_write
from hin.files import sha256 as sha256  # checkpoint.sha256: the name runs and reports use
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


def reference_state_dict(model: HIN) -> dict[str, Tensor]:
    """`model`'s weights under the reference implementation's names: what its
    `load_state_dict` takes (all but the decoding-state buffers, which hold no weights), so
    the reference can be run on exactly hin's weights. The inverse of `import_reference`."""
    return {reference_name(name): tensor for name, tensor in model.state_dict().items()}


class CheckpointError(HINError, ValueError):
    """A checkpoint that cannot be used, with what is wrong and how to fix it."""


# what torch.serialization.safe_globals takes: a function or class, here always with its name
SafeGlobals = list[Callable[..., Any] | tuple[Callable[..., Any], str]]


def _numpy_globals() -> SafeGlobals:
    """What unpickling numpy arrays, dtypes and scalars calls, under the names both numpy 1.x
    (`numpy.core.multiarray`) and numpy 2.x (`numpy._core.multiarray`) write into pickles.
    The functions are taken from numpy's own pickles, so they are right for either numpy.
    Only numeric dtypes: an object array could smuggle arbitrary objects."""
    # __reduce__ is typed `str | tuple`; numpy's arrays and scalars give (function, arguments)
    reconstruct = cast("Callable[..., Any]", np.zeros(0).__reduce__()[0])
    scalar = cast("Callable[..., Any]", np.float64(0).__reduce__()[0])
    named: SafeGlobals = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        named += [(reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    for code in "?bBhHiIlLqQefdgFDG":     # bool, (unsigned) integers, floats, complex
        dtype_class = type(np.dtype(code))
        named.append((dtype_class, f"{dtype_class.__module__}.{dtype_class.__qualname__}"))
    return named


NUMPY_GLOBALS = _numpy_globals()
# what `read` allows: numpy's, and the argparse namespace a training script may save its
# arguments in (inert: unpickling it only sets attributes)
SAFE_GLOBALS: SafeGlobals = [*NUMPY_GLOBALS, (argparse.Namespace, "argparse.Namespace")]


def read(path: str | Path) -> Any:
    """`torch.load` of a checkpoint file on the CPU, allowing nothing but tensors, plain
    Python data and numpy arrays/dtypes/scalars; the errors say which of "not a file",
    "pickles something we do not load" and "damaged" it is."""
    path = _checkpoint_file(path)
    return _load_safely(path, lambda: path)


def read_with_digest(path: str | Path) -> tuple[Any, str]:
    """`read`, and the sha256 of the very bytes it loaded: the file is read once (into
    memory, which `read` alone does not need)."""
    path = _checkpoint_file(path)
    data = path.read_bytes()
    return _load_safely(path, lambda: io.BytesIO(data)), hashlib.sha256(data).hexdigest()


def _checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: give the file "
                              "inside it (a hin run directory holds best.pt and last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _load_safely(path: Path, source: Callable[[], Path | IO[bytes]]) -> Any:
    """`read`'s loading and refusals, from `source()` (the file, or its bytes already read;
    called again to name what the safe loader refused)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            return torch.load(source(), map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several unrelated types for unreadable files
            refused = _refused_globals(source(), error)
            reason = _reason(error)
    if refused:
        raise CheckpointError(
            f"{path} pickles {', '.join(refused)}: hin loads only tensors, numbers, strings, "
            "containers and numpy arrays from checkpoints, never code or other objects. Export "
            "the weights where the file was made (torch.save(model.state_dict(), ...))")
    raise CheckpointError(
        f"{path} could not be read as a PyTorch checkpoint ({reason}); the file may be "
        "truncated or corrupted, or not a checkpoint at all: copy or save it again")


def _refused_globals(data: Path | IO[bytes], error: Exception) -> list[str]:
    """The pickled classes/functions the safe loader refused: every global the pickle names
    beyond the allowlist, and the class it would have had to build (an object array's dtype)."""
    try:
        refused = set(torch.serialization.get_unsafe_globals_in_checkpoint(data))
    except Exception:   # not a zip checkpoint (the legacy format, or no checkpoint at all)
        refused = set()
    for named_global, built_class in re.findall(r"GLOBAL (\S+)|but got <class '([^']+)'>",
                                                str(error)):
        refused.add(named_global or built_class)
    return sorted(refused)


def _reason(error: Exception) -> str:
    """torch's message without its boilerplate (which advises `weights_only=False`: never)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [line for line in lines
              if line and "weights_only" not in line and not line.startswith(boilerplate)]
    return f"{type(error).__name__}: {useful[0] if useful else 'no details'}"


def _assembled(config: HINConfig, state: dict[str, Tensor]) -> HIN:
    """An HIN built on the meta device (no initialisation to throw away), holding `state`'s
    tensors. Strict: every parameter and buffer of the model must be in `state`."""
    with torch.device("meta"):
        model = HIN(config)
    model.load_state_dict(state, assign=True)
    return model


def _read_reference_weights(source: dict[str, Any] | str | Path) -> dict[str, Tensor]:
    if isinstance(source, (str, Path)):
        source = read(source)
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
        max_positions=state["decoder.pos_emb.weight"].shape[0] - 1,
        grid_dim=grid_proj.shape[1],
        region_dim=region_proj.shape[1],
    )


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)}: {shown}" + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def import_reference(source: dict[str, Any] | str | Path, *, num_heads: int) -> HIN:
    """Build an HIN from a reference checkpoint (a state_dict, `{'state_dict': ...}` as the
    reference's training script saves it, or a .pth/.pt path holding either). The
    configuration is inferred from tensor shapes, except `num_heads`, which shapes cannot
    tell (the paper uses 8). The model gets copies: `source`'s tensors are never shared."""
    state = _read_reference_weights(source)
    config = _infer_reference_config(state, num_heads)
    with torch.device("meta"):
        ours = HIN(config).state_dict()
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
    return _assembled(config, {ours_name: state[ref_name].to(torch.float32, copy=True)
                               for ref_name, ours_name in mapping.items()}).eval()


def save(path: str | Path, model: HIN, record: CheckpointRecord | None = None,
         **extra: Any) -> Path:
    """Write config + weights + `record` (and `extra` entries beside it) atomically: a crash
    never leaves a half-written file at `path`. Extra values must be what `read` loads
    (tensors, plain Python data, numeric numpy arrays); anything else is refused before
    `path` is touched, naming the entry, so no checkpoint is written that could not be
    loaded."""
    path = Path(path)
    extra = {**(record.to_dict() if record is not None else {}), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "config": model.config.to_dict(), "model": model.state_dict(), "extra": extra}
    with atomic_write(path, "wb") as file:
        torch.save(payload, file)
        file.flush()
        if _unloadable(file.name):
            key = next(key for key, value in extra.items() if _unloadable({key: value}))
            held = ", ".join(_unloadable({key: extra[key]}))
            raise CheckpointError(
                f"cannot save {path}: entry {key!r} holds {held}, "
                "which checkpoints may not hold (hin loads only tensors, numbers, strings, "
                "containers and numeric numpy arrays): store plain data instead")
    return path


def _unloadable(source: str | Path | dict[str, Any]) -> list[str]:
    """The pickled globals in a checkpoint file (or in `source` saved alone) that `read`
    refuses."""
    readable: str | Path | IO[bytes]
    if isinstance(source, dict):
        readable = io.BytesIO()
        torch.save(source, readable)
        readable.seek(0)
    else:
        readable = source
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(readable))


def read_hin(path: str | Path) -> dict[str, Any]:
    """The raw payload of a hin checkpoint (format checked): config, weights, extra."""
    return _hin_payload(Path(path), read(path))


def _hin_payload(path: Path, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        looks_reference = isinstance(payload, dict) and (
            "state_dict" in payload or any(str(k).startswith("encoder.") for k in payload))
        hint = (" It looks like a reference HIN checkpoint: convert it with "
                f"`hin import-checkpoint {path} out.pt --heads 8`." if looks_reference else "")
        raise CheckpointError(f"{path} is not a hin checkpoint.{hint}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version "
                              f"{payload.get('format_version')}; this hin reads {FORMAT_VERSION}")
    return payload


def load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[HIN, dict[str, Any]]:
    """Read a hin checkpoint -> (model in eval mode, extra entries). Strict."""
    model, extra, _ = load_with_digest(path, map_location)
    return model, extra


def load_with_digest(path: str | Path, map_location: str | torch.device = "cpu"
                     ) -> tuple[HIN, dict[str, Any], str]:
    """`load`, and the sha256 of the bytes the model was read from (one read of the file)."""
    raw, digest = read_with_digest(path)
    payload = _hin_payload(Path(path), raw)
    try:
        config = HINConfig.from_dict(upgrade_legacy({"model": payload["config"]})[0]["model"])
        model = _assembled(config, payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match its config: {error}") from error
    return model.to(map_location).eval(), payload["extra"], digest


def max_regions_for(path: str | Path, record: CheckpointRecord, given: int | None = None
                    ) -> tuple[int, str | None]:
    """How many regions per image the model is given: the `data.max_regions` it was trained
    with (recorded in its configuration; the paper's 50 for checkpoints that record none, such
    as imported reference ones), unless `given` overrides it. Returns the value and, when a
    given value differs from the recorded one, a note saying so."""
    recorded = record.max_regions
    if given is not None and given < 1:
        raise UsageError(f"max_regions must be at least 1, got {given}")
    if given is None:
        return recorded or DataConfig.max_regions, None
    if recorded is not None and given != recorded:
        return given, (f"max_regions {given} overrides the {recorded} regions per image "
                       f"{path} was trained with")
    return given, None
