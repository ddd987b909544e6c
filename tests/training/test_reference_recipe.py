"""The packaged paper configurations are the reference's recipe (docs/reproduce.md).

The facts below are read from the reference implementation's train.py and common/train.py
(songchuanle-1/HIN), written down here so that a change of a packaged config that departs from
them fails: argparse defaults --batch_size 20, --xe_base_lr 1e-4, --rl_base_lr 5e-6, --N_enc 3,
--N_dec 3, --workers 8; SCST loads `batch_size // 5` images per batch (the dataset by image) and
XE `batch_size` shuffled (image, caption) pairs; Adam(betas=(0.9, 0.98)) in both stages; the
epoch loop runs at most 100 epochs and stops after 5 epochs without a better validation CIDEr,
never before epoch 15; beam 5, length 20; at most 50 regions per image.
"""

from __future__ import annotations

import pytest

from hin.config import HINConfig, RunConfig
from hin.training.schedule import lr_factor

REFERENCE_BATCH_SIZE = 20
REFERENCE = {
    "xe": {"batch_size": REFERENCE_BATCH_SIZE, "captions_per_image": 1, "lr": 1e-4},
    "scst": {"batch_size": REFERENCE_BATCH_SIZE // 5, "lr": 5e-6, "scst_captions": "beam"},
}
REFERENCE_LOOP = {"epochs": 100, "patience": 5, "min_epochs": 15,
                  "adam_beta1": 0.9, "adam_beta2": 0.98}
# The reference's lambda_lr and lambda_lr_rl, epoch by epoch (epochs counted from 1).
REFERENCE_XE_FACTORS = {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 10: 1.0, 11: 0.2, 12: 0.2, 13: 0.04, 40: 0.04}
REFERENCE_SCST_FACTORS = {1: 1.0, 8: 1.0, 9: 0.2, 11: 0.2, 12: 0.04, 14: 0.04, 15: 0.008, 60: 0.008}
RELEASED_FILES = {"grid_features": "data/coco/COCO2014_ViT-L-14.hdf5",
                  "region_features": "data/coco/COCO2014_VinVL.hdf5",
                  "annotations": "data/coco/annotations"}


@pytest.mark.parametrize("stage", ["xe", "scst"])
def test_the_paper_configs_are_the_reference_recipe(stage):
    config = RunConfig.load(f"coco_{stage}")
    train = config.train
    assert train.stage == stage
    for name, value in {**REFERENCE[stage], **REFERENCE_LOOP}.items():
        assert getattr(train, name) == value, f"coco_{stage}: train.{name}"
    assert (train.validation.beam_size, train.validation.max_len) == (5, 20)
    assert config.model == HINConfig()          # the paper's model: 3 layers, d 512, 8 heads
    assert config.data.max_regions == 50 and config.data.num_workers == 8
    for name, path in RELEASED_FILES.items():
        assert getattr(config.data, name) == path


def test_the_schedules_are_the_reference_schedules():
    for epoch, factor in REFERENCE_XE_FACTORS.items():
        assert lr_factor("xe", epoch) == pytest.approx(factor), epoch
    for epoch, factor in REFERENCE_SCST_FACTORS.items():
        assert lr_factor("scst", epoch) == pytest.approx(factor), epoch


@pytest.mark.parametrize("variant, reference, departs", [
    ("coco_xe_grouped", "coco_xe", {"captions_per_image": 5, "batch_size": 50, "epochs": 20}),
    ("coco_scst_large", "coco_scst", {"batch_size": 50, "epochs": 50}),
])
def test_the_faster_variants_change_only_what_they_say(variant, reference, departs):
    """The variants' departures are exactly the ones their headers and docs/model.md list."""
    fast, paper = RunConfig.load(variant), RunConfig.load(reference)
    differ = {name for name in vars(paper.train) if getattr(fast.train, name) != getattr(paper.train, name)}
    assert differ == set(departs)
    assert {name: getattr(fast.train, name) for name in departs} == departs
    assert fast.model == paper.model
    assert fast.data.grid_features == paper.data.grid_features
