"""Which device to run on: `auto` means the GPU when there is one. Shared by training,
evaluation, extraction and captioning so that every command reads `--device` alike."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA device `local_rank` when CUDA is available, else the CPU; an explicit
    CUDA device on a machine without CUDA is an error that says what to use instead."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; "
                         "use --device auto (or train.device=auto) or cpu")
    return device
