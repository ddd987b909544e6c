"""Loading Hugging Face (`transformers`) models for extraction, and the precision rules every
extractor computes and stores by: fp32, bf16 autocast, fp16 weights on CUDA; features stored
as float16 or float32 whatever the arithmetic."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hin.config import EXTRACTION_PRECISIONS, STORAGE_DTYPES, check_precision
from hin.devices import autocast, resolve_precision
from hin.errors import MissingExtraError, UsageError, pip_install

COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_extraction_precision(name: str, device: torch.device) -> str:
    """`fp32` | `bf16` | `auto` as everywhere in hin (`hin.devices.resolve_precision`), plus
    `fp16`: the weights themselves in float16, on CUDA only (faster, not the reference's
    arithmetic: it computed the released CLIP grids in fp32)."""
    check_precision(name, EXTRACTION_PRECISIONS, "extraction precision")
    if name == "fp16" and device.type != "cuda":
        raise UsageError(f"precision fp16 needs a CUDA device, not {device}: on a CPU use bf16 "
                         "(fast where it has avx512_bf16 or AMX) or fp32")
    return name if name == "fp16" else resolve_precision(name, device)


def storage_dtype(name: str) -> np.dtype:
    """`float16` | `float32` (`--store-as`) -> the NumPy dtype features are stored in."""
    if name not in STORAGE_DTYPES:
        raise UsageError(f"features are stored as one of {', '.join(STORAGE_DTYPES)}, got {name!r}")
    return np.dtype(name)


def weights_dtype(precision: str) -> torch.dtype:
    """fp16 casts the weights; fp32 and bf16 keep them in float32 (bf16 runs under autocast)."""
    return torch.float16 if precision == "fp16" else torch.float32


def extraction_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for `bf16`; nothing for fp32 and fp16 (whose weights are float16)."""
    return autocast(device, "bf16" if precision == "bf16" else "fp32")


def transformers_module() -> Any:
    """The `transformers` package, or an error saying how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise MissingExtraError("feature extraction needs the `transformers` package: "
                                f"{pip_install('extract')}") from error
    return transformers


def load_pretrained(model_class: type, model: str, device: torch.device, precision: str,
                    revision: str | None = None) -> Any:
    """A transformers model from a local folder or the Hugging Face cache (never downloaded
    here: hin reaches no network at run time), in eval mode, with its weights in the dtype
    `precision` (resolved) needs."""
    try:
        loaded = model_class.from_pretrained(model, revision=revision, local_files_only=True,
                                             dtype=weights_dtype(precision))
    except OSError as error:
        raise FileNotFoundError(_missing_weights(model_class.__name__, model, revision, error)
                                ) from error
    return loaded.to(device).eval()


def _missing_weights(class_name: str, model: str, revision: str | None, error: OSError) -> str:
    """One line: which weights, where they were looked for, what to do, and how to try hin's
    recipe without them."""
    from huggingface_hub.constants import HF_HUB_CACHE

    which = f"{class_name} weights {model!r}{f' (revision {revision})' if revision else ''}"
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if Path(model).exists():
        where = f"the folder {model} does not hold them in a readable form ({reason})"
    else:
        where = (f"there is no folder {model!r} here and they are not in the Hugging Face cache "
                 f"{HF_HUB_CACHE} (hin never downloads them itself)")
    return (f"could not load {which}: {where}. Give a folder written by save_pretrained, or "
            f"download them once with network access (`hf download {model}`); to try the "
            "recipe without them, the offline extractors made for the synthetic pictures need "
            "no weights: `--extractor synth-grid` and `--extractor synth-regions`")

