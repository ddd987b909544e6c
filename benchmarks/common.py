"""Shared helpers for the benchmark scripts: flags, the paper-size model and its random
features, device choice, timing, peak memory."""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable

import torch

from hin.config import PRECISIONS, HINConfig
from hin.devices import resolve_device, resolve_precision
from hin.model import HIN


def paper_size_parser(description: str, beam_search: bool = False) -> argparse.ArgumentParser:
    """The flags every paper-size model benchmark shares: batch sizes, feature shapes,
    device, precisions (each is measured in turn) and repeats; with `beam_search`, also the
    paper's beam and length."""
    parser = argparse.ArgumentParser(description=description)
    if beam_search:
        parser.add_argument("--beam", type=int, default=5)
        parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--grid-tokens", type=int, default=256)
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS,
                        help="fp32 (exact) and/or bf16 autocast; auto = bf16 where it is fast")
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def paper_size_model(device_name: str) -> tuple[torch.device, HIN]:
    """The chosen device and the paper's HIN on it (HINConfig() defaults, random weights from
    seed 0) that never ends a caption: its <eos> logit is 0, far below the largest of 10,201
    random logits, so every beam search decodes all max_len steps, the fixed work of the
    reference's loop (random weights that end beams early would time fewer steps)."""
    device = resolve_device(device_name)
    torch.manual_seed(0)
    model = HIN(HINConfig())
    with torch.no_grad():
        model.decoder.head.weight[model.config.eos_id] = 0
    return device, model.to(device)


def random_features(batch: int, args: argparse.Namespace, config: HINConfig,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random grid [batch, grid_tokens, grid_dim] and region [batch, regions, region_dim]
    features: speed and memory depend only on their shapes."""
    return (torch.randn(batch, args.grid_tokens, config.grid_dim, device=device),
            torch.randn(batch, args.regions, config.region_dim, device=device))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, float]:
    """(median wall seconds, minimum wall seconds, median CPU seconds of this process) of `fn`
    over `repeats` runs, after one warm-up run. On a CPU shared with other work the CPU
    seconds are the steadier figure (with one thread, about the wall time of an idle machine)."""
    fn()
    synchronize(device)
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return sorted(walls)[len(walls) // 2], min(walls), sorted(cpus)[len(cpus) // 2]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> str:
    """CUDA: peak allocated since the last reset. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"


def describe(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name, thread count and current load."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "unknown CPU")
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    return f"{model}, {torch.get_num_threads()} threads, load average {load}"


def precisions(args: argparse.Namespace, device: torch.device) -> list[str]:
    """The asked-for precisions resolved for `device` (auto -> fp32 or bf16), in order."""
    return list(dict.fromkeys(resolve_precision(name, device) for name in args.precision))
