"""The pure parts of training: the paper's schedules and stopping rule, the SCST loss on a
hand-computed example, the per-rank data order, RNG capture, and the run configuration."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers.paths import SRC
from helpers.tiny import tiny_features, tiny_model
from hin.cli import main
from hin.config import ConfigError, RunConfig
from hin.decoding import teacher_forcing_inputs
from hin.devices import autocast
from hin.training.distributed import Context, EpochOrder
from hin.training.schedule import lr_factor, scst_lr_factor, should_stop, xe_lr_factor
from hin.training.scst import scst_loss, sequence_mask
from hin.training.state import capture_rng, restore_rng
from hin.training.xe import next_token_nll

CONFIGS = SRC / "hin" / "configs"


def test_xe_schedule_warms_up_then_decays_by_epoch():
    factors = [xe_lr_factor(epoch) for epoch in range(1, 16)]
    assert factors == [0.25, 0.5, 0.75] + [1.0] * 7 + [0.2, 0.2] + [0.04] * 3


def test_scst_schedule_steps_down_every_three_epochs_after_eight():
    factors = [scst_lr_factor(epoch) for epoch in range(1, 18)]
    assert factors == [1.0] * 8 + [0.2] * 3 + [0.04] * 3 + [0.008] * 3


def test_lr_factor_picks_the_stage_schedule():
    assert (lr_factor("xe", 2), lr_factor("scst", 2)) == (0.5, 1.0)
    assert (lr_factor("xe", 12), lr_factor("scst", 12)) == (0.2, 0.04)


@pytest.mark.parametrize("epoch, since_best, expected", [
    (14, 10, False),    # never before min_epochs
    (15, 4, False),     # still within patience
    (15, 5, True),
    (30, 6, True),
    (30, 0, False),     # just improved
])
def test_should_stop_with_the_papers_patience_and_minimum(epoch, since_best, expected):
    assert should_stop(epoch, since_best, patience=5, min_epochs=15) is expected


def test_patience_zero_never_stops():
    assert not should_stop(100, 100, patience=0, min_epochs=0)


def test_scst_loss_matches_a_hand_computed_example():
    # image 0: rewards 1 and 0 -> baseline 0.5, advantages +0.5 and -0.5;
    # image 1: equal rewards -> advantages 0, no contribution.
    token_logprobs = torch.tensor([[[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]],
                                   [[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]]], requires_grad=True)
    mask = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
                         [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    rewards = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    max_len = 4
    loss = scst_loss(token_logprobs, mask, rewards, max_len)
    # beam (0,0): -(−3/4 × 0.5); beam (0,1): -(−10/4 × −0.5); mean over 4 beams.
    assert loss.item() == pytest.approx((0.375 - 1.25) / 4)
    loss.backward()
    expected_grad = -mask * torch.tensor([[0.5, -0.5], [0.0, 0.0]])[..., None] / (max_len * 4)
    torch.testing.assert_close(token_logprobs.grad, expected_grad)
    assert token_logprobs.grad[0, 0, 2] == 0          # tokens after <eos> carry no gradient


def test_sequence_mask_keeps_tokens_up_to_eos_and_drops_padding():
    pad, eos = 1, 3
    beams = torch.tensor([[[5, 6, eos, pad], [7, eos, pad, pad]]])
    assert sequence_mask(beams, pad).tolist() == [[[1, 1, 1, 0], [1, 1, 0, 0]]]


def test_teacher_forcing_inputs_shift_the_beams_right_after_bos():
    beams = torch.tensor([[[5, 6, 3], [7, 3, 1]]])
    assert teacher_forcing_inputs(beams, bos_id=2).tolist() == [[[2, 5, 6], [2, 7, 3]]]


def test_teacher_forcing_inputs_pad_lists_of_words_to_the_longest():
    """explain and serve feed the words of captions of different lengths."""
    assert teacher_forcing_inputs([[5, 6, 7], [8], []], bos_id=2, pad_id=1).tolist() == [
        [2, 5, 6], [2, 8, 1], [2, 1, 1]]
    assert teacher_forcing_inputs([[], []], bos_id=2, pad_id=1).tolist() == [[2], [2]]


def context(rank: int = 0, world_size: int = 1) -> Context:
    return Context(rank, world_size, torch.device("cpu"))


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    first = EpochOrder(23, 4, seed=7, epoch=3, context=context()).indices
    assert first == EpochOrder(23, 4, seed=7, epoch=3, context=context()).indices
    assert first != EpochOrder(23, 4, seed=7, epoch=4, context=context()).indices
    assert first != EpochOrder(23, 4, seed=8, epoch=3, context=context()).indices
    assert len(first) == 20 and len(set(first)) == 20      # 5 whole batches, no repeats


def test_ranks_split_each_global_batch_disjointly():
    single = EpochOrder(23, 4, seed=0, epoch=1, context=context())
    ranks = [EpochOrder(23, 4, seed=0, epoch=1, context=context(rank, 2)) for rank in (0, 1)]
    assert [order.batches for order in ranks] == [5, 5] and ranks[0].per_rank == 2
    for batch in range(5):
        global_batch = single.indices[4 * batch: 4 * (batch + 1)]
        shares = [order.indices[2 * batch: 2 * (batch + 1)] for order in ranks]
        assert shares[0] + shares[1] == global_batch
    assert not set(ranks[0].indices) & set(ranks[1].indices)


def test_epoch_order_resumes_at_a_global_batch():
    whole = EpochOrder(23, 4, seed=0, epoch=1, context=context(1, 2))
    later = EpochOrder(23, 4, seed=0, epoch=1, context=context(1, 2), start_batch=3)
    assert later.indices == whole.indices[3 * 2:] and len(later) == 4
    assert later.batches == whole.batches                  # progress bars count the whole epoch


def test_epoch_order_refuses_a_batch_the_ranks_cannot_share():
    with pytest.raises(ValueError, match=r"batch_size \(5\) must be divisible .* \(2\)"):
        EpochOrder(23, 5, seed=0, epoch=1, context=context(0, 2))


def test_rng_capture_and_restore_repeat_every_generator():
    state = capture_rng()
    drawn = (torch.rand(3), random.random(), np.random.rand(2))
    restore_rng(state)
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(drawn[0], again[0]) and drawn[1] == again[1]
    assert np.array_equal(drawn[2], again[2])


def test_unknown_config_keys_are_rejected_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['lr_rate'\]; valid keys "
                                          r"are \[.*'batch_size'.*'nonfinite'"):
        RunConfig.load(None, ["train.lr_rate=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['trian'\]; valid keys are "
                                          r"\['data', 'model', 'run_dir', 'train'\]"):
        RunConfig.load(None, ["trian.epochs=3"])


@pytest.mark.parametrize("override, message", [
    ("train.stage=rl", r"stage must be one of \('xe', 'scst'\)"),
    ("train.nonfinite=ignore", r"nonfinite must be one of \('stop', 'skip'\)"),
    ("train.max_steps=-1", r"max_steps must be a non-negative integer"),
    ("train.lr=0", r"lr must be a positive number"),
    ("train.precision=fp16", r"TrainConfig.precision must be one of fp32, bf16, auto, got 'fp16'"),
    ("train.captions_per_image=3", r"batch_size \(50\) counts captions and must be a multiple "
                                   r"of captions_per_image \(3\)"),
    ("train.captions_per_image=0", r"captions_per_image must be a positive integer"),
])
def test_bad_training_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.load(None, [override])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_grouped_captions_give_the_loss_of_their_pairs_and_padding_rows_add_nothing(precision):
    """Captions of one image decoded as a group [1, K, T] (one encoder pass, a row of <pad>
    filling the group) give the same summed NLL, count and gradients as the same captions
    as pairs [K, T] with the image repeated."""
    model = tiny_model().train()                      # dropout 0: both layouts are exact
    grid, region = tiny_features(batch=1)
    captions = torch.tensor([[2, 5, 6, 7, 3, 1], [2, 8, 3, 1, 1, 1], [2, 9, 9, 10, 11, 3]])
    group = torch.cat((captions, torch.full((1, 6), 1)))[None]           # [1, 4, 6]
    results = []
    for tokens, copies in ((group, 1), (captions, 3)):
        model.zero_grad()
        with autocast(torch.device("cpu"), precision):
            total, count = next_token_nll(model, grid.expand(copies, -1, -1),
                                          region.expand(copies, -1, -1), tokens, pad_id=1)
        total.backward()
        results.append((total.item(), count.item(), model.decoder.head.weight.grad.clone()))
    (grouped, grouped_count, grouped_grad), (paired, paired_count, paired_grad) = results
    assert grouped_count == paired_count == 11
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    assert grouped == pytest.approx(paired, abs=tolerance * 11)
    torch.testing.assert_close(grouped_grad, paired_grad, atol=tolerance, rtol=0)


@pytest.mark.parametrize("name", ["synth_xe", "synth_scst", "coco_xe", "coco_scst", "coco_xe_grouped",
                                  "coco_scst_large"])
def test_bundled_configs_load(name):
    config = RunConfig.load(CONFIGS / f"{name}.yaml")
    assert config.train.stage == name.split("_")[1]


def test_learning_rates_in_scientific_notation_are_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-4\n")
    assert RunConfig.load(path).train.lr == 1e-4
    assert RunConfig.load(path, ["train.lr=2E-5"]).train.lr == 2e-5
    assert RunConfig.load(None, ["run_dir=runs/1e3x"]).run_dir == "runs/1e3x"
    with pytest.raises(ConfigError, match="train.lr=.fast.: expected a number"):
        RunConfig.load(None, ["train.lr=fast"])


@pytest.mark.parametrize("override, message", [
    ("train.tensorboard=maybe", "train.tensorboard='maybe': expected true or false (bool)"),
    ("model.dropout=high", "model.dropout='high': expected a number (float)"),
    ("train.epochs=true", "train.epochs=True: expected an integer (int)"),
    ("train.epochs=2.5", "train.epochs=2.5: expected an integer (int)"),
    ("data.vocabulary=[a]", "data.vocabulary=['a']: expected a string (str)"),
])
def test_values_must_have_their_declared_type(override, message, capsys):
    with pytest.raises(ConfigError) as error:
        RunConfig.load(None, [override])
    assert str(error.value) == message
    assert main(["train", "--config", str(CONFIGS / "synth_xe.yaml"), override]) == 2
    assert capsys.readouterr().err == f"hin train: error: {message}\n"


def test_integers_are_accepted_where_numbers_are_expected():
    config = RunConfig.load(None, ["train.lr=1", "model.dropout=0"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)


def test_a_key_given_twice_in_a_yaml_file_is_refused_with_its_line(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  d_model: 64\ntrain:\n  lr: 1.0e-4\n")
    message = f"config file {path} line 5: key 'train' is given twice (first on line 1); keep one"
    with pytest.raises(ConfigError) as error:
        RunConfig.load(path)
    assert str(error.value) == message
    assert main(["train", "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"hin train: error: {message}\n"


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: [1e-4\nmodel:\n  d_model: 64\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hin train: error: config file {path} line 4: ") and err.count("\n") == 1
    assert main(["train", "--config", str(CONFIGS / "synth_xe.yaml"), "train.lr=[1"]) == 2
    assert "override 'train.lr=[1': '[1' is not a value" in capsys.readouterr().err


def test_an_empty_run_dir_is_refused(capsys):
    with pytest.raises(ConfigError, match="run_dir is empty"):
        RunConfig.load(None, ["run_dir="])
    assert main(["train", "--config", str(CONFIGS / "synth_xe.yaml"), "run_dir="]) == 2
    assert "run_dir is empty: name the run's directory" in capsys.readouterr().err
