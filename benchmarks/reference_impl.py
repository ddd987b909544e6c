"""The published reference implementation of HIN, built from a checkout of it on disk and
given hin's weights, so that `decode.py --reference DIR` times it in the same run, on the same
CPU and on the same work as hin (benchmarks/README.md, "Timing the reference in the same run",
says how to get such a checkout). Nothing in src/hin imports this: the reference's code is
imported only inside `import_models_of`, from DIR."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hin.checkpoint import REFERENCE_STATE_BUFFERS, reference_state_dict
from hin.model import HIN

HOW_TO = "see benchmarks/README.md, 'Timing the reference in the same run'"
# The modules the reference's repository ships only as compiled .pyc files: a checkout gets
# them from the meshed-memory transformer's repository, whose classes they are.
FROM_M2 = ("models_of.transformer", "common.models.containers", "common.models.captioning_model",
           "common.models.beam_search", "common.models.beam_search.beam_search",
           "common.models.transformer.utils", "utils", "utils.typing")
# The reference's top-level packages; benchmarks/common.py shares the first name.
REFERENCE_PACKAGES = ("common", "utils", "models_of")
# Shapes the reference hard-codes (its encoder's input widths, its decoder's slices).
GRID_TOKENS, REGIONS = 256, 50


class ReferenceUnavailable(Exception):
    """The checkout at --reference cannot give a model: one line saying what is missing and
    the fix."""


def _missing(directory: Path, error: ImportError) -> str:
    name = error.name or str(error)
    if "cannot import name" in str(error):       # the module is there, without a name it needs
        return f"--reference {directory}: {error} ({HOW_TO})"
    if name == "models_of":
        return (f"--reference {directory}: no models_of package there; DIR must be a checkout "
                f"of songchuanle-1/HIN ({HOW_TO})")
    if name in FROM_M2:
        return (f"--reference {directory}: the checkout lacks module {name} (the HIN repository "
                f"ships it only as .pyc); add it from aimagelab/meshed-memory-transformer "
                f"({HOW_TO})")
    if not (directory / name.split(".")[0]).exists():
        return (f"--reference {directory}: the reference needs the package {name}, which is not "
                f"installed: pip install {name.split('.')[0]}")
    return f"--reference {directory}: {error} ({HOW_TO})"


def import_models_of(directory: str | Path) -> ModuleType:
    """The checkout's `models_of` package, imported with DIR first on sys.path only while
    importing. The reference's `common` is a namespace package (no __init__.py), which any
    `common.py` on the path outranks, this folder's included: while importing, the path
    leaves out the entries that hold such a module, and modules already loaded under the
    reference's top-level names are set aside; both are put back after."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ReferenceUnavailable(f"--reference {directory}: no such directory ({HOW_TO})")
    aside = _take_out_reference_names()
    path = sys.path[:]
    sys.path[:] = [str(directory)] + [entry for entry in path if not _shadows(Path(entry or "."))]
    try:
        return importlib.import_module("models_of")
    except ImportError as error:
        raise ReferenceUnavailable(_missing(directory, error)) from None
    finally:
        sys.path[:] = path
        _take_out_reference_names()
        sys.modules.update(aside)


def _shadows(entry: Path) -> bool:
    return any((entry / f"{name}.py").is_file() or (entry / name / "__init__.py").is_file()
               for name in REFERENCE_PACKAGES)


def _take_out_reference_names() -> dict[str, ModuleType]:
    """Remove from sys.modules (and return) every module under the reference's top-level
    names, so that each import reads DIR afresh and nothing of it stays importable after."""
    names = [name for name in sys.modules
             if name.split(".")[0] in REFERENCE_PACKAGES]
    return {name: sys.modules.pop(name) for name in names}


def reference_model(models_of: ModuleType, model: HIN) -> nn.Module:
    """The reference's Transformer at `model`'s size, holding `model`'s weights (renamed by
    `hin.checkpoint.reference_state_dict`), in eval mode on `model`'s device: built as the
    reference's test.py builds it."""
    config = model.config
    per_head = config.d_model // config.num_heads
    sizes = dict(d_model=config.d_model, d_k=per_head, d_v=per_head, h=config.num_heads,
                 d_ff=config.d_ff, dropout=config.dropout)
    try:
        encoder = models_of.build_encoder(config.num_layers, device="cpu", **sizes)
        decoder = models_of.build_decoder(config.vocab_size, config.max_positions, config.num_layers,
                                          config.pad_id, **sizes)
        reference = models_of.Transformer(config.bos_id, encoder, decoder)
        result = reference.load_state_dict(reference_state_dict(model), strict=False)
    except (TypeError, RuntimeError) as error:    # another signature, or weights of other shapes
        first_line = str(error).strip().splitlines()[0]
        raise ReferenceUnavailable(f"the reference's model cannot be built with hin's weights "
                                   f"({first_line}); is the checkout songchuanle-1/HIN as "
                                   f"published? ({HOW_TO})") from None
    missing = [key for key in result.missing_keys
               if key.rpartition(".")[2] not in REFERENCE_STATE_BUFFERS]
    if missing or result.unexpected_keys:
        raise ReferenceUnavailable(
            f"the reference's model does not take hin's weights: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}; is the checkout songchuanle-1/HIN?")
    device = next(model.parameters()).device
    return reference.to(device).eval()


def beam_search(reference: nn.Module, grid: torch.Tensor, region: torch.Tensor, beam: int,
                max_len: int, eos_id: int) -> torch.Tensor:
    """The reference's best beams [B, max_len], searched as its test.py does: fp32, eval,
    no_grad, the features as a [grid, region] list, one output per image."""
    with torch.no_grad():
        words, _ = reference.beam_search([grid, region], max_len, eos_id, beam, out_size=1)
    return words


def through_eos(words: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each row's words up to and including its first <eos>: what two searches must share
    to have found the same caption (the filler after <eos> differs between them)."""
    captions = []
    for row in words.tolist():
        captions.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
    return captions
