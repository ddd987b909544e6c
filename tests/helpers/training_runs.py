"""Tiny training runs for the training tests: a one-layer HIN on a 20-image synthetic set,
and the worker each process of the 2-process gloo test runs.

The worker lives here (not in a test module) so that `torch.multiprocessing.spawn` children
can import it by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hin.config import RunConfig
from hin.extract.shapes import GRID_DIM, REGION_DIM

TRAIN_IMAGES = 20         # 100 caption pairs: 10 steps per epoch at batch 10
BATCHES_PER_EPOCH = 10


def tiny_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """`key=value` overrides for a run that takes a few seconds on one CPU core."""
    return [f"run_dir={run_dir}",
            f"data.annotations={data_dir}",
            f"data.grid_features={data_dir / 'grid.hdf5'}",
            f"data.region_features={data_dir / 'region.hdf5'}",
            f"data.vocabulary={data_dir / 'vocab.json'}",
            "data.max_regions=4", "data.num_workers=0",
            "model.num_layers=1", "model.d_model=32", "model.num_heads=4", "model.d_ff=64",
            f"model.grid_dim={GRID_DIM}", f"model.region_dim={REGION_DIM}",
            "train.batch_size=10", "train.val_batch_size=10", "train.val_full_metrics=false",
            "train.validation.beam_size=2", "train.validation.max_len=8", "train.log_every=1", "train.epochs=2",
            "train.device=cpu", *extra]


def ddp_worker(rank: int, world_size: int, port: int, overrides: list[str], out_dir: str,
               init: str | None = None) -> None:
    """One process of a gloo group: train (from `init`'s weights if given), then write this
    rank's weights for comparison."""
    from hin.training import distributed
    from hin.training.run import build_trainer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    trainer = build_trainer(RunConfig.load(None, overrides), init=init, progress=False)
    try:
        trainer.fit()
        torch.save({"model": trainer.model.state_dict(), "rank": trainer.context.rank,
                    "world_size": trainer.context.world_size},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.teardown(trainer.context)
