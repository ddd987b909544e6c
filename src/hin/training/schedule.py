"""The paper's epoch-wise learning-rate schedules and SCST stopping rule (docs/model.md §8).

Epochs are counted from 1. These are pure functions of the epoch number, so a resumed run
recomputes exactly the rate the uninterrupted run used.
"""

from __future__ import annotations


def xe_lr_factor(epoch: int) -> float:
    """Epochs 1–3 warm up as e/4, 4–10 full rate, 11–12 ×0.2, later ×0.04."""
    if epoch <= 3:
        return epoch / 4
    if epoch <= 10:
        return 1.0
    if epoch <= 12:
        return 0.2
    return 0.04


def scst_lr_factor(epoch: int) -> float:
    """Full rate for 8 epochs, then ×0.2, ×0.04 and ×0.008, each step after 3 more epochs."""
    if epoch <= 8:
        return 1.0
    if epoch <= 11:
        return 0.2
    if epoch <= 14:
        return 0.04
    return 0.008


def lr_factor(stage: str, epoch: int) -> float:
    return xe_lr_factor(epoch) if stage == "xe" else scst_lr_factor(epoch)


def should_stop(epoch: int, epochs_since_best: int, patience: int, min_epochs: int) -> bool:
    """Stop once validation CIDEr has not improved for `patience` epochs, but never before
    `min_epochs` (SCST: 5 and 15). patience 0 disables early stopping."""
    return patience > 0 and epoch >= min_epochs and epochs_since_best >= patience
