"""`hin train` end to end on a tiny synthetic set: resuming equals not stopping (bit for
bit on CPU), signals and non-finite losses never lose the last good checkpoint, the best
checkpoint comes from validation alone, and 2 gloo processes train as one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from helpers.training_runs import BATCHES_PER_EPOCH, ddp_worker, tiny_overrides
from hin import checkpoint
from hin.cli import main
from hin.config import RunConfig
from hin.data.coco import load_split
from hin.data.vocab import Vocabulary
from hin.evaluate import evaluate
from hin.model import HIN
from hin.training import loop, run, rundir
from hin.training.loop import TrainingError, TrainingInterrupted
from hin.training.run import resume, start
from hin.training.rundir import RunDirectoryError
from hin.training.runlog import LOG_FILE


def config(synth: Path, run_dir: Path, *extra: str) -> RunConfig:
    return RunConfig.load(None, tiny_overrides(synth, run_dir, *extra))


def saved(run_dir: Path, name: str = rundir.LAST) -> tuple[dict, dict]:
    """(model state dict, extra entries) of a checkpoint in run_dir."""
    model, extra = checkpoint.load(run_dir / name)
    return model.state_dict(), extra


def log_records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / LOG_FILE).read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


@pytest.fixture(scope="module")
def uninterrupted(synth, tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """Two epochs in one go, recording which annotation splits training asked for."""
    run_dir = tmp_path_factory.mktemp("runs") / "uninterrupted"
    requested: list[list[str]] = []
    real_load_splits = run.load_splits

    def recording_load_splits(source, names):
        requested.append(list(names))
        return real_load_splits(source, names)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "load_splits", recording_load_splits)
        start(config(synth, run_dir), progress=False)
    return run_dir, requested


def assert_same_tensors(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_resume_mid_epoch_equals_the_uninterrupted_run_bit_for_bit(synth, uninterrupted, tmp_path):
    reference_dir, _ = uninterrupted
    stopped_dir = tmp_path / "stopped"
    start(config(synth, stopped_dir, "train.max_steps=7"), progress=False)
    _, extra = saved(stopped_dir)
    assert extra["training"]["progress"]["step"] == 7
    assert extra["training"]["progress"]["batch"] == 7
    assert not (stopped_dir / rundir.BEST).exists()     # no validation happened yet

    resume(stopped_dir, ["train.max_steps=0"], progress=False)

    reference_weights, reference = saved(reference_dir)
    resumed_weights, resumed = saved(stopped_dir)
    assert config(synth, reference_dir).model.dropout > 0    # so the RNG restore matters
    assert_same_tensors(reference_weights, resumed_weights)
    reference_optimizer = reference["training"]["optimizer"]
    resumed_optimizer = resumed["training"]["optimizer"]
    assert reference_optimizer["param_groups"] == resumed_optimizer["param_groups"]
    for index, state in reference_optimizer["state"].items():
        assert_same_tensors(state, resumed_optimizer["state"][index])
    assert reference["training"]["progress"] == resumed["training"]["progress"]
    assert resumed["training"]["progress"]["step"] == 2 * BATCHES_PER_EPOCH
    assert log_records(stopped_dir, "epoch") == log_records(reference_dir, "epoch")

    def without_timing(records):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in records]
    assert without_timing(log_records(stopped_dir, "step")) == without_timing(
        log_records(reference_dir, "step"))
    assert [r["step"] for r in log_records(stopped_dir, "resume")] == [7]
    assert_same_tensors(saved(reference_dir, rundir.BEST)[0], saved(stopped_dir, rundir.BEST)[0])


def test_a_checkpoint_saved_by_the_foreach_adam_resumes_with_fused_adam_bit_for_bit(
        synth, uninterrupted, tmp_path):
    """hin before the fused kernel saved its optimiser state with foreach Adam's settings:
    such a last.pt resumes with the same moments, and the run keeps the fused kernel."""
    reference_dir, _ = uninterrupted
    stopped_dir = tmp_path / "stopped"
    start(config(synth, stopped_dir, "train.max_steps=7"), progress=False)
    model, extra = checkpoint.load(stopped_dir / rundir.LAST)
    groups = extra["training"]["optimizer"]["param_groups"]
    assert all(group["fused"] is True for group in groups)
    for group in groups:
        group["fused"] = group["foreach"] = None       # how the foreach Adam saved its state
    checkpoint.save(stopped_dir / rundir.LAST, model, **extra)

    resume(stopped_dir, ["train.max_steps=0"], progress=False)
    assert_same_tensors(saved(reference_dir)[0], saved(stopped_dir)[0])
    resumed_groups = saved(stopped_dir)[1]["training"]["optimizer"]["param_groups"]
    assert all(group["fused"] is True for group in resumed_groups)


def test_caption_groups_in_bf16_resume_bit_for_bit_and_use_every_caption_once(synth, tmp_path):
    grouped = ("train.captions_per_image=5", "train.precision=bf16", "train.epochs=1")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    start(config(synth, whole, *grouped), progress=False)
    start(config(synth, stopped, *grouped, "train.max_steps=4"), progress=False)
    resume(stopped, ["train.max_steps=0"], progress=False)
    assert_same_tensors(saved(whole)[0], saved(stopped)[0])
    assert saved(stopped)[1]["training"]["progress"] == saved(whole)[1]["training"]["progress"]
    # 10 batches of 2 images x 5 captions: the 100 training captions, each once
    assert saved(whole)[1]["training"]["progress"]["step"] == BATCHES_PER_EPOCH
    assert log_records(stopped, "epoch") == log_records(whole, "epoch")


def test_best_checkpoint_is_chosen_on_validation_and_test_is_never_loaded(uninterrupted):
    run_dir, requested = uninterrupted
    assert requested and all("test" not in names for names in requested)
    epochs = log_records(run_dir, "epoch")
    scores = [record["val"]["CIDEr-D"] for record in epochs]
    best_epoch = epochs[scores.index(max(scores))]["epoch"]
    _, best = saved(run_dir, rundir.BEST)
    assert best["epoch"] == best_epoch
    assert best["validation"] == epochs[best_epoch - 1]["val"]
    best_so_far, improved = -math.inf, []
    for score in scores:
        improved.append(score > best_so_far)
        best_so_far = max(best_so_far, score)
    assert [record["best"] for record in epochs] == improved
    assert "training" not in best          # best.pt is a model, not a resumable state


def test_validation_equals_hin_evaluate_of_the_validation_split(synth, uninterrupted):
    """One score_split: the CIDEr-D that chose best.pt is what `hin evaluate` gives it."""
    run_dir, _ = uninterrupted
    _, best = saved(run_dir, rundir.BEST)
    run = RunConfig.from_dict(best["config"])
    result = evaluate([run_dir / rundir.BEST], "val", run.data, decoding=run.train.validation,
                      batch_size=run.train.val_batch_size, spice=False, progress=False)
    assert result.cider_d == best["validation"]["CIDEr-D"]


def test_resolved_config_is_written_and_stored_in_every_checkpoint(synth, uninterrupted):
    run_dir, _ = uninterrupted
    written = yaml.safe_load((run_dir / rundir.CONFIG_FILE).read_text())
    vocabulary = Vocabulary.load(synth / "vocab.json")
    assert written["model"]["vocab_size"] == len(vocabulary)
    assert written["train"]["batch_size"] == 10 and written["run_dir"] == str(run_dir)
    assert RunConfig.from_dict(written).to_dict() == written     # complete: every key resolved
    for name in (rundir.LAST, rundir.BEST):
        _, extra = saved(run_dir, name)
        assert extra["config"] == written
        assert Vocabulary.from_dict(extra["vocabulary"]).words == vocabulary.words
        profile = extra["feature_profile"]          # for hin.data.familiarity's note
        train_images = len(load_split(written["data"]["annotations"], "train").images)
        assert profile["training_images"] == train_images
        assert profile["sampled"] == min(256, train_images) and profile["largest_distance"] > 0


def test_a_second_start_into_an_existing_run_is_refused(synth, uninterrupted):
    run_dir, _ = uninterrupted
    before = (run_dir / rundir.LAST).read_bytes()
    with pytest.raises(RunDirectoryError, match=r"already holds a run.*hin train --resume"):
        start(config(synth, run_dir), progress=False)
    assert (run_dir / rundir.LAST).read_bytes() == before


def send_signal_during_step(monkeypatch, signum: int, step: int) -> None:
    """The process signals itself while computing the loss of optimiser step `step`."""
    real_loss = loop.Trainer._xe_loss

    def loss_then_signal(self, batch):
        if self.progress.step == step - 1:
            os.kill(os.getpid(), signum)
        return real_loss(self, batch)
    monkeypatch.setattr(loop.Trainer, "_xe_loss", loss_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_it_interrupted_and_the_run_resumes(synth, tmp_path, monkeypatch,
                                                                     signum):
    run_dir = tmp_path / "run"
    handler_before = signal.getsignal(signum)
    send_signal_during_step(monkeypatch, signum, step=3)
    with pytest.raises(TrainingInterrupted, match=rf"step 3.*--resume {run_dir}"):
        start(config(synth, run_dir, "train.epochs=1"), progress=False)
    _, extra = saved(run_dir)
    assert extra["training"]["progress"]["step"] == 3
    assert log_records(run_dir, "stop") == [{"event": "stop", "reason": "signal", "step": 3}]
    assert signal.getsignal(signum) == handler_before

    monkeypatch.undo()
    resume(run_dir, progress=False)
    _, extra = saved(run_dir)
    assert extra["training"]["progress"]["step"] == BATCHES_PER_EPOCH
    assert extra["training"]["progress"]["epoch"] == 2         # epoch 1 finished
    assert (run_dir / rundir.BEST).is_file()


def test_cli_exits_130_after_saving_on_sigint(synth, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    send_signal_during_step(monkeypatch, signal.SIGINT, step=3)
    code = main(["train", "--config", "synth_xe", *tiny_overrides(synth, run_dir)])
    assert code == 130
    assert f"hin train --resume {run_dir}" in capsys.readouterr().err
    assert saved(run_dir)[1]["training"]["progress"]["step"] == 3


def nan_loss_at_batch(monkeypatch, batch_number: int) -> None:
    """The loss of the `batch_number`-th batch of the run (1-based) becomes NaN."""
    real_loss = loop.Trainer._xe_loss
    calls = []

    def loss_or_nan(self, batch):
        loss, values = real_loss(self, batch)
        calls.append(batch)
        if len(calls) == batch_number:
            return loss * math.nan, {**values, "loss": math.nan}
        return loss, values
    monkeypatch.setattr(loop.Trainer, "_xe_loss", loss_or_nan)


def test_a_nonfinite_loss_stops_with_its_step_and_keeps_the_last_good_checkpoint(
        synth, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    nan_loss_at_batch(monkeypatch, 3)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 3 .*nonfinite=skip"):
        start(config(synth, run_dir, "train.checkpoint_every=2"), progress=False)
    _, extra = saved(run_dir)
    assert extra["training"]["progress"]["step"] == 2
    assert [r["step"] for r in log_records(run_dir, "nonfinite")] == [3]


def test_nonfinite_skip_drops_the_batch_and_goes_on(synth, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    nan_loss_at_batch(monkeypatch, 3)
    start(config(synth, run_dir, "train.nonfinite=skip", "train.max_steps=4"), progress=False)
    [event] = log_records(run_dir, "nonfinite")
    assert (event["step"], event["policy"], event["loss"]) == (3, "skip", "nan")
    weights, extra = saved(run_dir)
    progress = extra["training"]["progress"]
    assert (progress["step"], progress["batch"]) == (4, 5)   # 4 steps over 5 batches
    assert all(torch.isfinite(value).all() for value in weights.values())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("captions_per_image", [1, 5])
def test_two_gloo_processes_train_like_one_process_on_the_same_global_batch(synth, tmp_path,
                                                                          captions_per_image):
    steps = ("model.dropout=0", "train.max_steps=3",
             f"train.captions_per_image={captions_per_image}")
    single_dir = tmp_path / "single"
    start(config(synth, single_dir, *steps), progress=False)

    ddp_dir = tmp_path / "ddp"
    mp.spawn(ddp_worker, args=(2, free_port(), tiny_overrides(synth, ddp_dir, *steps),
                               str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert_same_tensors(ranks[0]["model"], ranks[1]["model"])      # ranks stay in sync
    single_weights, _ = saved(single_dir)
    ddp_weights, ddp_extra = saved(ddp_dir)                         # written by rank 0 alone
    assert_same_tensors(ddp_weights, ranks[0]["model"])
    assert ddp_extra["training"]["progress"]["step"] == 3
    for name, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], value, atol=1e-5, rtol=1e-5, msg=name)
    logged = [[r["loss"] for r in log_records(run, "step")] for run in (single_dir, ddp_dir)]
    assert logged[1] == pytest.approx(logged[0], abs=1e-5)        # the whole batch's loss
    torch.manual_seed(0)                                            # the Trainer's init
    initial = HIN(RunConfig.from_dict(ddp_extra["config"]).model).state_dict()
    assert not all(torch.equal(initial[name], value) for name, value in ddp_weights.items())


def test_two_gloo_processes_train_scst_through_the_self_critical_module_in_step(synth, uninterrupted,
                                                                              tmp_path):
    """SelfCritical under DistributedDataParallel: every rank searches, scores and steps on
    its images, and the gradient all-reduce keeps the ranks' weights equal."""
    xe_run, _ = uninterrupted
    ddp_dir = tmp_path / "ddp_scst"
    overrides = tiny_overrides(synth, ddp_dir, "train.stage=scst", "train.lr=1e-4", "train.max_steps=2",
                               "train.validation.beam_size=2")
    mp.spawn(ddp_worker, args=(2, free_port(), overrides, str(tmp_path), str(xe_run / rundir.BEST)),
             nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert_same_tensors(ranks[0]["model"], ranks[1]["model"])
    steps = log_records(ddp_dir, "step")
    assert [r["step"] for r in steps] == [1, 2] and all(r["stage"] == "scst" for r in steps)
    xe_weights = checkpoint.load(xe_run / rundir.BEST)[0].state_dict()
    assert not all(torch.equal(xe_weights[name], value) for name, value in ranks[0]["model"].items())


def test_scst_from_an_xe_checkpoint_rewards_beams_and_selects_on_validation(synth, uninterrupted,
                                                                          tmp_path):
    xe_run, _ = uninterrupted
    run_dir = tmp_path / "scst"
    best = start(config(synth, run_dir, "train.stage=scst", "train.lr=1e-5", "train.epochs=1",
                        "train.validation.beam_size=3"), init=xe_run / rundir.BEST, progress=False)
    assert best.is_file()
    steps = log_records(run_dir, "step")
    assert steps and all(r["stage"] == "scst" and 0 <= r["reward"] for r in steps)
    assert any(r["reward"] > 0 for r in steps)
    assert (run_dir / rundir.CIDER_TABLE).is_file()     # training-reference df, built once
    xe_model, _ = checkpoint.load(xe_run / rundir.BEST)
    scst_model, extra = checkpoint.load(best)
    assert scst_model.config == xe_model.config        # the architecture comes from --init
    init = {"path": str(xe_run / rundir.BEST), "sha256": checkpoint.sha256(xe_run / rundir.BEST)}
    assert extra["init"] == init and saved(run_dir)[1]["init"] == init
    assert log_records(run_dir, "init") == [{"event": "init", **init}]
    assert extra["validation"]["CIDEr-D"] == log_records(run_dir, "epoch")[0]["val"]["CIDEr-D"]
    assert any(not torch.equal(a, b) for a, b in zip(xe_model.state_dict().values(),
                                                       scst_model.state_dict().values()))


@pytest.mark.parametrize("captions", ["beam", "sample"])
def test_scst_resumed_mid_epoch_equals_the_uninterrupted_run_bit_for_bit(synth, uninterrupted,
                                                                        tmp_path, captions):
    init = uninterrupted[0] / rundir.BEST
    scst = ("train.stage=scst", "train.lr=1e-5", "train.validation.beam_size=3",  # 2 steps per epoch
            f"train.scst_captions={captions}", "train.scst_samples=3")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    start(config(synth, whole, *scst), init=init, progress=False)
    start(config(synth, stopped, *scst, "train.max_steps=3"), init=init, progress=False)
    resume(stopped, ["train.max_steps=0"], progress=False)
    assert saved(stopped)[1]["training"]["progress"] == saved(whole)[1]["training"]["progress"]
    assert saved(stopped)[1]["init"] == saved(whole)[1]["init"]       # kept across the resume
    assert_same_tensors(saved(whole)[0], saved(stopped)[0])
    rewards = [[r["reward"] for r in log_records(run, "step")] for run in (whole, stopped)]
    assert len(rewards[0]) == 4 and rewards[1] == rewards[0]


def train_cli(synth: Path, run_dir: Path, *extra: str) -> int:
    return main(["train", "--config", "synth_xe",
                 *tiny_overrides(synth, run_dir, *extra)])


def one_line_error(capsys) -> str:
    """The error the command ended with (after any progress bars): one line, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n"), err
    return err.splitlines()[-1] + "\n"


@pytest.mark.parametrize("name", [rundir.LAST, rundir.BEST])
def test_a_checkpoint_makes_a_directory_an_existing_run(synth, tmp_path, capsys, name):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_text("from an earlier run\n")
    assert train_cli(synth, run_dir) == 2
    assert one_line_error(capsys) == (
        f"hin train: error: {run_dir} already holds a run ({name}); continue it with "
        f"`hin train --resume {run_dir}` or choose another run_dir\n")
    assert [p.name for p in run_dir.iterdir()] == [name]
    assert (run_dir / name).read_text() == "from an earlier run\n"


def test_a_finished_run_says_how_to_extend_it(synth, uninterrupted, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run_dir)
    before = (run_dir / rundir.LAST).read_bytes()
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert one_line_error(capsys) == (
        f"hin train: error: the run in {run_dir} is finished: it trained all train.epochs=2 "
        f"epochs. To train on, resume with a higher limit, e.g. `hin train --resume {run_dir} "
        "train.epochs=7` (any number of epochs above it)\n")
    assert (run_dir / rundir.LAST).read_bytes() == before

    resume(run_dir, ["train.epochs=3"], progress=False)
    progress = saved(run_dir)[1]["training"]["progress"]
    assert (progress["epoch"], progress["step"]) == (4, 3 * BATCHES_PER_EPOCH)
    assert [r["epoch"] for r in log_records(run_dir, "epoch")] == [1, 2, 3]


def test_a_run_stopped_by_the_stopping_rule_says_how_to_extend_it(synth, uninterrupted,
                                                                   tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run_dir)
    payload = checkpoint.read_hin(run_dir / rundir.LAST)
    payload["extra"]["training"]["progress"].update(epochs_since_best=2, done=True)
    torch.save(payload, run_dir / rundir.LAST)
    rule = ["train.epochs=9", "train.patience=2", "train.min_epochs=1"]
    with pytest.raises(RunDirectoryError, match=r"stopped by the stopping rule after epoch 2 "
                                                r"\(2 epochs without a better validation score, "
                                                r"train.patience=2\).*train.patience=7` \(train.patience=0: no "
                                                r"early stopping\)$"):
        resume(run_dir, rule)


def test_max_steps_reached_is_finished_and_stale_temporary_files_are_removed(synth, tmp_path,
                                                                            capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")   # a kill during a save
    assert train_cli(synth, run_dir, "train.max_steps=3") == 0
    assert not (run_dir / ".last.pt.x1y2.tmp").exists()
    (run_dir / ".best.pt.z3.tmp").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert one_line_error(capsys).endswith(
        "it reached train.max_steps=3 (step 3). To train on, resume with a higher limit, e.g. "
        f"`hin train --resume {run_dir} train.max_steps=1003` (train.max_steps=0: no step "
        "limit)\n")
    assert saved(run_dir)[1]["training"]["progress"]["step"] == 3
    assert main(["train", "--resume", str(run_dir), "train.max_steps=4"]) == 0
    assert saved(run_dir)[1]["training"]["progress"]["step"] == 4
    assert not (run_dir / ".best.pt.z3.tmp").exists()


def test_scst_needs_init_and_init_fixes_the_model(synth, uninterrupted, tmp_path, capsys):
    run_dir = tmp_path / "scst"
    assert train_cli(synth, run_dir, "train.stage=scst") == 2
    assert "train.stage=scst fine-tunes a trained model: give the cross-entropy checkpoint to " \
           "start from with --init" in one_line_error(capsys)
    init = uninterrupted[0] / rundir.BEST
    assert main(["train", "--config", "synth_scst", "--init",
                 str(init), *tiny_overrides(synth, run_dir, "model.d_model=64",
                                            "model.dropout=0.1")]) == 2
    assert one_line_error(capsys) == (
        f"hin train: error: the model settings come from --init {init}, but model.d_model=64 "
        "(checkpoint: 32) differ from it: drop those model.* settings (or train from scratch "
        "without --init)\n")
    assert not (run_dir / rundir.LOG_FILE).exists()


def test_a_resumed_run_keeps_its_model_and_takes_no_init(synth, uninterrupted, capsys):
    run_dir = uninterrupted[0]
    assert main(["train", "--resume", str(run_dir), "model.d_ff=128", "train.epochs=3"]) == 2
    assert "a resumed run keeps its model: model.d_ff=128 (checkpoint: 64) differ" in \
        one_line_error(capsys)
    assert main(["train", "--resume", str(run_dir), "--init", str(run_dir / rundir.BEST)]) == 2
    assert "--init starts a new run" in one_line_error(capsys)


def test_an_unsupported_device_is_one_line(synth, tmp_path, capsys):
    assert train_cli(synth, tmp_path / "run", "train.device=tpu") == 2
    assert one_line_error(capsys) == ("hin train: error: unknown device 'tpu': use auto, cpu, cuda "
                                      "or cuda:N\n")


def test_a_run_directory_that_cannot_be_written_is_one_line(synth, tmp_path, capsys, monkeypatch):
    def refused(*args, **kwargs):   # what the OS answers in a read-only directory (even root's,
        raise PermissionError(errno.EACCES, "Permission denied")   # on a read-only mount)
    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    run_dir = tmp_path / "run"
    assert train_cli(synth, run_dir) == 2
    assert one_line_error(capsys) == (
        f"hin train: error: cannot write in the run directory {run_dir} (Permission denied): "
        "choose another run_dir or make it writable\n")


def test_a_full_disk_while_saving_keeps_the_previous_last_checkpoint(synth, tmp_path, capsys,
                                                                   monkeypatch):
    run_dir = tmp_path / "run"
    real_save, calls = torch.save, []

    def disk_fills_up(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(*args, **kwargs)
    monkeypatch.setattr(torch, "save", disk_fills_up)
    assert train_cli(synth, run_dir, "train.checkpoint_every=2", "train.max_steps=5") == 2
    assert one_line_error(capsys) == (
        f"hin train: error: no space left on the device writing {run_dir / rundir.LAST}; the "
        "previous last.pt is intact. Free some space and try again\n")
    monkeypatch.undo()
    assert saved(run_dir)[1]["training"]["progress"]["step"] == 2
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix in (".pt", ".tmp")) == [rundir.LAST]


def test_a_nonfinite_loss_before_any_checkpoint_claims_none(synth, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    nan_loss_at_batch(monkeypatch, 2)
    assert train_cli(synth, run_dir) == 1
    err = one_line_error(capsys)
    assert "non-finite loss (nan) at step 2 (epoch 1, batch 2); no checkpoint was saved before it" \
        in err and "last good checkpoint" not in err
    assert not (run_dir / rundir.LAST).exists()
