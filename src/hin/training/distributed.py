"""One process or many (torchrun): process group, data order per rank, gathers.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) each process joins a group — NCCL on GPUs,
gloo on CPU — and takes its slice of every global batch; rank 0 alone writes files. A group
of one (`torchrun --nproc-per-node 1`) runs the same path, DistributedDataParallel included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from hin.devices import resolve_device
from hin.errors import UsageError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device
    in_group: bool = False      # joined a torchrun process group (possibly of one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.in_group


def setup(device_name: str) -> Context:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE set, even to 1);
    otherwise one process without a group."""
    if "WORLD_SIZE" not in os.environ:
        return Context(0, 1, resolve_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size(), device, in_group=True)


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(context: Context, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (all ranks receive the list)."""
    if not context.distributed:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_object(context: Context, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(context: Context, value: torch.Tensor) -> torch.Tensor:
    if context.distributed:
        dist.all_reduce(value)
    return value


# Each (seed, epoch) gets its own generator seed, seed * stride + epoch: distinct for every run
# shorter than `stride` epochs, so two seeds never replay each other's orders shifted by an epoch.
EPOCH_SEED_STRIDE = 100_003


class EpochOrder(Sampler[int]):
    """This rank's indices for one epoch: a permutation seeded by (seed, epoch), cut into
    global batches of `batch_size`, each split evenly across ranks, starting at global batch
    `start_batch`. The order is a pure function of its arguments, which is what makes
    resuming mid-epoch exact. The last incomplete global batch is dropped."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, context: Context,
                 start_batch: int = 0):
        if batch_size % context.world_size:
            raise UsageError(f"train.batch_size ({batch_size}) must be divisible by the number "
                             f"of processes ({context.world_size})")
        generator = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
        order = torch.randperm(size, generator=generator)
        batches = size // batch_size
        per_rank = batch_size // context.world_size
        rows = order[: batches * batch_size].view(batches, context.world_size, per_rank)
        self.indices = rows[start_batch:, context.rank].reshape(-1).tolist()
        self.batches = batches
        self.per_rank = per_rank

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
