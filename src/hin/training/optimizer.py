"""The optimiser (docs/model.md §8): Adam with PyTorch's fused kernel.

The fused kernel updates each parameter's moments in one pass instead of the default
(foreach) kernel's several; on the paper-size model (79M parameters) an update takes about a
quarter of the CPU time (benchmarks/README.md). Both keep the same state (step, exp_avg,
exp_avg_sq per parameter), so a state saved by either resumes in the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def adam(parameters: Iterable[torch.nn.Parameter], *, lr: float,
         betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam over float32 parameters on a CPU or CUDA device (the devices hin trains on,
    both of which have the fused kernel)."""
    return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=True)


def load_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimiser state, whichever kernel saved it (hin before the fused kernel
    saved foreach Adam's): moments and step counts are restored, and the kernel stays the one
    `optimizer` was built with (`load_state_dict` alone would take the saved one's)."""
    kernels = [(group["fused"], group["foreach"]) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (fused, foreach) in zip(optimizer.param_groups, kernels, strict=True):
        group["fused"], group["foreach"] = fused, foreach
