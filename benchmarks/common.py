"""Shared helpers for the benchmark scripts: flags, the paper-size model and its random
features, device choice, timing, peak memory."""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch

from hin.config import HINConfig
from hin.devices import resolve_device
from hin.model import HIN


def paper_size_parser(description: str, beam_search: bool = False) -> argparse.ArgumentParser:
    """The flags every paper-size model benchmark shares: batch sizes, feature shapes,
    device, bf16 autocast and repeats; with `beam_search`, also the paper's beam and length."""
    parser = argparse.ArgumentParser(description=description)
    if beam_search:
        parser.add_argument("--beam", type=int, default=5)
        parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--grid-tokens", type=int, default=256)
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def paper_size_model(device_name: str) -> tuple[torch.device, HIN]:
    """The chosen device and the paper's HIN on it (HINConfig() defaults, random weights from
    seed 0)."""
    device = resolve_device(device_name)
    torch.manual_seed(0)
    return device, HIN(HINConfig()).to(device)


def random_features(batch: int, args: argparse.Namespace, config: HINConfig,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random grid [batch, grid_tokens, grid_dim] and region [batch, regions, region_dim]
    features: speed and memory depend only on their shapes."""
    return (torch.randn(batch, args.grid_tokens, config.grid_dim, device=device),
            torch.randn(batch, args.regions, config.region_dim, device=device))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall seconds of `fn` over `repeats` runs, after one warm-up run."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> str:
    """CUDA: peak allocated since the last reset. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"
