"""Which device and which arithmetic to run on, read alike by every command.

`--device auto` means the GPU when there is one. `--precision auto` means bfloat16 where
the device computes it fast (a CUDA GPU with bf16 support, or a CPU with the avx512_bf16 or
AMX instructions) and float32 elsewhere; fp32 stays the exact reference path.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from hin.config import ConfigError, check_precision


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA device `local_rank` when CUDA is available, else the CPU; an explicit
    CUDA device on a machine without CUDA is an error that says what to use instead."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here; "
                          "use --device auto (or train.device=auto) or cpu")
    return device


@functools.cache
def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises bfloat16 matrix instructions (avx512_bf16 or amx_bf16).
    Read from the kernel's flags, not guessed from the model name; False where unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """`fp32` | `bf16` | `auto` -> `fp32` or `bf16` for this device."""
    if check_precision(name) != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The model's forward under bfloat16 autocast for `bf16`, a no-op for `fp32`."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name as the kernel reports it (platform's guess elsewhere)."""
    import platform

    with contextlib.suppress(OSError):
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def version_report() -> str:
    """What `hin --version` prints: hin's and torch's versions and the hardware `--device auto`
    would use, the first thing to quote in a bug report."""
    import os

    from hin import __version__
    from hin.errors import DISTRIBUTION

    lines = [f"hin {__version__} (pip package {DISTRIBUTION})", f"torch {torch.__version__}",
             f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
             f", fast bf16: {'yes' if cpu_has_fast_bf16() else 'no'}"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            lines.append(f"GPU cuda:{index}: {properties.name}, {properties.total_memory / 2**30:.0f} GiB "
                         f"(CUDA {torch.version.cuda})")
    else:
        built = "this torch is built without CUDA" if torch.version.cuda is None else \
            f"torch built for CUDA {torch.version.cuda} but no usable GPU"
        lines.append(f"GPU: none ({built}); --device auto uses the CPU")
    return "\n".join(lines)
