"""Where a run stands (`Progress`) and the random-number states, as saved in every `last.pt`
so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch


@dataclass
class Progress:
    """Where the run stands; saved in every `last.pt`."""

    epoch: int = 1              # the epoch in progress (1-based)
    batch: int = 0              # global batches already done in this epoch
    step: int = 0               # optimiser steps since the run began
    best_score: float = -math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0
    done: bool = False
    epoch_losses: list[float] = field(default_factory=list)   # so a resumed epoch logs the
    skipped: int = 0            # batches of this epoch skipped for a non-finite loss


def capture_rng() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _numpy_state_to_plain(cast(tuple[Any, ...], np.random.get_state()))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state: tuple[Any, ...]) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_state_from_plain(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
            state["has_gauss"], state["gauss"])
