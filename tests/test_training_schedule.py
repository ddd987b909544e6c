"""The paper's epoch-wise learning-rate schedules and the SCST stopping rule (spec §8)."""

import pytest

from hin.training.schedule import lr_factor, scst_lr_factor, should_stop, xe_lr_factor


def test_xe_schedule_warms_up_then_steps_down():
    factors = [xe_lr_factor(epoch) for epoch in range(1, 16)]
    assert factors == [0.25, 0.5, 0.75] + [1.0] * 7 + [0.2, 0.2] + [0.04] * 3


def test_scst_schedule_holds_eight_epochs_then_divides_every_three():
    factors = [scst_lr_factor(epoch) for epoch in range(1, 20)]
    assert factors == [1.0] * 8 + [0.2] * 3 + [0.04] * 3 + [0.008] * 5
    assert 5e-6 * scst_lr_factor(15) == pytest.approx(4e-8)


def test_lr_factor_picks_the_stage():
    assert lr_factor("xe", 1) == 0.25
    assert lr_factor("scst", 1) == 1.0


@pytest.mark.parametrize("epoch, since_best, stops", [
    (14, 9, False),    # never before epoch 15, however long without improvement
    (15, 4, False),    # 4 epochs without improvement are not enough
    (15, 5, True),
    (20, 6, True),
    (20, 0, False),
])
def test_scst_stops_after_five_epochs_without_improvement_not_before_epoch_15(
        epoch, since_best, stops):
    assert should_stop(epoch, since_best, patience=5, min_epochs=15) is stops


def test_patience_zero_never_stops():
    assert should_stop(100, 100, patience=0, min_epochs=0) is False
