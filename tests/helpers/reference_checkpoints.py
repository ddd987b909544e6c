"""Checkpoint files written the way the reference's training script writes them.

Its `train.py` saves, every epoch, a dict with the model's state_dict, the Adam optimiser's
and LambdaLR scheduler's states, the RNG states of torch, CUDA, numpy and `random`, and
numpy floats for the validation CIDEr. The published checkpoints are such files.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import torch


def save_like_reference_training(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Write `state_dict` inside a reference-style training checkpoint at `path`."""
    parameters = [tensor.clone().requires_grad_() for tensor in state_dict.values()
                  if tensor.is_floating_point()]
    optimizer = torch.optim.Adam(parameters, lr=1.0, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
    for _ in range(2):
        optimizer.zero_grad()
        sum(p.square().sum() for p in parameters).backward()
        optimizer.step()
        scheduler.step()
    val_cider = np.float64(1.0873)
    torch.save({
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.get_rng_state(),   # torch.cuda.get_rng_state(): a uint8 tensor too
        "numpy_rng_state": np.random.get_state(),
        "random_rng_state": random.getstate(),
        "epoch": 7,
        "val_loss": np.float64(2.3125),
        "val_cider": val_cider,
        "state_dict": state_dict,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "patience": 2,
        "best_cider": val_cider,
        "use_rl": False,
    }, path)
    return path


def as_if_pickled_by_numpy_1(source: Path, target: Path) -> Path:
    """A copy of `source` whose pickle names numpy's functions as numpy 1.x wrote them
    (`numpy.core.multiarray`, which numpy 2 renamed `numpy._core.multiarray`)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for entry in original.infolist():
            data = original.read(entry)
            if entry.filename.endswith("/data.pkl"):
                renamed = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
                assert renamed != data
                data = renamed
            copy.writestr(entry, data)
    return target


# 30 entries, as the reference's small golden model reads: <unk> <pad> <bos> <eos>, 26 words
REFERENCE_WORDS = ["<unk>", "<pad>", "<bos>", "<eos>", "a", "dog", "cat", "on", "the", "red",
                   "blue", "green", "man", "woman", "sitting", "table", "with", "of", "in",
                   "street", "car", "bus", "tree", "grass", "field", "ball", "playing", "riding",
                   "horse", "two"]


def write_legacy_vocab(words: list[str], path: Path) -> Path:
    """A vocabulary pickle as the reference's `common.data.vocab.Vocab` writes it (its class
    named by that module path, `itos` and a `freqs` Counter)."""
    import collections
    import pickle
    import sys
    import types

    names = ("common", "common.data", "common.data.vocab")
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    vocab_class = type("Vocab", (), {"__module__": "common.data.vocab"})
    modules["common.data.vocab"].Vocab = vocab_class
    legacy = vocab_class()
    legacy.itos = list(words)
    legacy.freqs = collections.Counter({word: 10 for word in words[4:]})
    sys.modules.update(modules)
    try:
        path.write_bytes(pickle.dumps(legacy, protocol=2))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


def write_reference_outputs(golden: dict, directory: Path) -> tuple[Path, Path, Path]:
    """The golden inputs as released feature files (ids 1 and 2) and the reference's own
    beam-search captions of them as a COCO results file (its beam: golden["config"])."""
    import json

    import h5py

    grid, region = directory / "grid.hdf5", directory / "region.hdf5"
    with h5py.File(grid, "w") as grids, h5py.File(region, "w") as regions:
        for index in range(golden["grid"].shape[0]):
            grids[f"{index + 1}_features"] = golden["grid"][index].numpy()
            regions[f"{index + 1}_features"] = golden["region"][index].numpy()
    eos = REFERENCE_WORDS.index("<eos>")
    captions = []
    for index, beams in enumerate(golden["beam_seq"].tolist()):
        best = beams[0][:beams[0].index(eos)] if eos in beams[0] else beams[0]
        captions.append({"image_id": index + 1,
                         "caption": " ".join(REFERENCE_WORDS[t] for t in best if t > eos)})
    results = directory / "reference_captions.json"
    results.write_text(json.dumps(captions))
    return grid, region, results
