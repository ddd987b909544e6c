"""Checkpoint formats: strict reference import, our atomic format, clear errors."""

import errno
import os

import numpy as np
import pytest
import torch

from helpers.reference_checkpoints import save_like_reference_training
from helpers.tiny import tiny_features, tiny_model
from hin.checkpoint import (
    REFERENCE_STATE_BUFFERS,
    CheckpointError,
    import_reference,
    load,
    read,
    reference_name,
    reference_state_dict,
    save,
)
from hin.cli import main
from hin.files import OutOfSpaceError
from hin.model import HIN


def reference_state(golden):
    return dict(golden["state_dicts"][0])


def test_reference_names_cover_every_parameter(golden):
    model = import_reference(reference_state(golden), num_heads=4)
    names = {reference_name(n) for n in model.state_dict()}
    assert "encoder.layers.2.golbal_cls_region.attention.fc_o.bias" in names
    assert "decoder.layers.1.lnorm2.weight" in names
    assert "decoder.layers.0.self_cross_enc.layer_norm.weight" in names
    assert "decoder.pos_emb.weight" in names


def test_reference_state_dict_gives_back_the_reference_weights(golden):
    """hin -> reference names is the exact inverse of the import: every weight of the
    reference's state_dict comes back under its own name, only the decoding buffers absent."""
    state = reference_state(golden)
    exported = reference_state_dict(import_reference(state, num_heads=4))
    weights = {k: v for k, v in state.items() if k.rpartition(".")[2] not in REFERENCE_STATE_BUFFERS}
    assert exported.keys() == weights.keys()
    assert all(torch.equal(exported[k], weights[k]) for k in weights)


def test_reference_state_dict_round_trips_a_hin_model():
    model = tiny_model()
    again = import_reference(reference_state_dict(model), num_heads=model.config.num_heads)
    for (name, a), (other, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == other and torch.equal(a, b)


def test_import_accepts_wrapped_dict_and_path(golden, tmp_path):
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": reference_state(golden), "epoch": 3}, path)
    from_path = import_reference(path, num_heads=4)
    from_dict = import_reference(reference_state(golden), num_heads=4)
    for a, b in zip(from_path.state_dict().values(), from_dict.state_dict().values()):
        assert torch.equal(a, b)


def test_import_skips_only_the_decoding_buffers(golden):
    state = reference_state(golden)
    assert any(k.endswith("running_keys") for k in state)
    state["encoder.layers.0.extra_thing.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1: encoder\.layers\.0\.extra_thing\.weight\)"):
        import_reference(state, num_heads=4)


def test_import_rejects_a_renamed_key(golden):
    state = reference_state(golden)
    state["decoder.layers.0.proj_one.weight"] = state.pop("decoder.layers.0.proj1.weight")
    with pytest.raises(CheckpointError) as error:
        import_reference(state, num_heads=4)
    assert "missing keys (1: decoder.layers.0.proj1.weight)" in str(error.value)
    assert "unexpected keys (1: decoder.layers.0.proj_one.weight)" in str(error.value)


def test_import_rejects_shape_mismatch(golden):
    state = reference_state(golden)
    state["decoder.fc.weight"] = torch.zeros(30, 63)
    with pytest.raises(CheckpointError, match=r"shape mismatches .*decoder\.fc\.weight \[30, 63\] vs \[30, 64\]"):
        import_reference(state, num_heads=4)


def test_import_rejects_heads_that_do_not_divide(golden):
    with pytest.raises(ValueError, match="divisible by num_heads"):
        import_reference(reference_state(golden), num_heads=5)


def test_truncated_file_is_a_clear_error(golden, tmp_path):
    good = save(tmp_path / "good.pt", tiny_model())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as error:
        load(truncated)
    assert "weights_only" not in str(error.value)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        import_reference(truncated, num_heads=4)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope.pt")


def test_loading_a_reference_checkpoint_suggests_import(golden, tmp_path):
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": reference_state(golden)}, path)
    with pytest.raises(CheckpointError, match="hin import-checkpoint"):
        load(path)


def test_round_trip_with_extra_entries(tmp_path):
    model = tiny_model(seed=5)
    extra = {"vocab": {"words": ["<unk>", "<pad>"]}, "step": 7, "rng": torch.get_rng_state()}
    path = save(tmp_path / "sub" / "model.pt", model, **extra)
    loaded, loaded_extra = load(path)
    assert loaded.config == model.config
    assert loaded_extra["step"] == 7 and loaded_extra["vocab"] == extra["vocab"]
    assert torch.equal(loaded_extra["rng"], extra["rng"])
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert not loaded.training
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]   # no temp files left


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = save(tmp_path / "model.pt", tiny_model(seed=1))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save(path, tiny_model(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_cli_import_checkpoint(golden, tmp_path, capsys):
    reference = tmp_path / "ref.pth"
    torch.save({"state_dict": reference_state(golden)}, reference)
    out = tmp_path / "hin.pt"
    assert main(["import-checkpoint", str(reference), str(out), "--heads", "4"]) == 0
    assert "3 layers, d_model 64, vocab 30, 4 heads" in capsys.readouterr().out
    model, _ = load(out)
    assert model.config.num_heads == 4


def test_cli_reports_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["import-checkpoint", str(bad), str(tmp_path / "o.pt"), "--heads", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hin import-checkpoint: error: {bad} could not be read as a PyTorch "
                          "checkpoint (UnpicklingError: ") and "truncated or corrupted" in err
    assert "weights_only" not in err and len(err.splitlines()) == 1


class RunsAShellCommand:
    """What a malicious checkpoint pickles: unpickling it would run `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_os_system_is_refused_by_name_and_never_runs(golden, tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pth"
    state = save_like_reference_training(reference_state(golden), tmp_path / "ref.pth")
    payload = torch.load(state, weights_only=False)
    torch.save({**payload, "hook": RunsAShellCommand(marker)}, bad)
    refused = f"{os.system.__module__}.system"
    for attempt in (lambda: load(bad), lambda: import_reference(bad, num_heads=4)):
        with pytest.raises(CheckpointError, match=rf"bad\.pth pickles {refused}: hin loads only "
                                                  "tensors") as error:
            attempt()
        assert "truncated" not in str(error.value) and "weights_only" not in str(error.value)
    assert main(["import-checkpoint", str(bad), str(tmp_path / "out.pt"), "--heads", "4"]) == 2
    err = capsys.readouterr().err
    assert f"pickles {refused}:" in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_numpy_object_arrays_stay_refused(tmp_path):
    import numpy as np

    path = tmp_path / "objects.pt"
    torch.save({"values": np.array([{"a": 1}], dtype=object)}, path)
    with pytest.raises(CheckpointError, match=r"objects\.pt pickles numpy\.dtypes\.ObjectDType: "):
        read(path)


def test_a_reference_training_checkpoint_keeps_its_numpy_entries(golden, tmp_path):
    payload = read(save_like_reference_training(reference_state(golden), tmp_path / "ref.pth"))
    name, keys, *_ = payload["numpy_rng_state"]
    assert name == "MT19937" and keys.dtype.name == "uint32" and keys.shape == (624,)
    assert float(payload["val_cider"]) == pytest.approx(1.0873)
    assert payload["scheduler"]["last_epoch"] == 2


def test_a_directory_is_not_called_missing(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        load(tmp_path)
    assert main(["import-checkpoint", str(tmp_path), str(tmp_path / "o.pt"), "--heads", "8"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_import_checkpoint_requires_heads(golden, tmp_path, capsys):
    reference = tmp_path / "ref.pth"
    torch.save({"state_dict": reference_state(golden)}, reference)
    assert main(["import-checkpoint", str(reference), str(tmp_path / "out.pt")]) == 2
    assert "does not record its head count (tensor shapes cannot tell it): give --heads" \
        in capsys.readouterr().err
    with pytest.raises(TypeError, match="num_heads"):
        import_reference(reference)


def test_import_checkpoint_never_overwrites_its_input_unless_forced(golden, tmp_path, capsys):
    reference = tmp_path / "ref.pth"
    torch.save({"state_dict": reference_state(golden)}, reference)
    before = reference.read_bytes()
    same = tmp_path / "." / "ref.pth"
    assert main(["import-checkpoint", str(reference), str(same), "--heads", "4"]) == 2
    assert "is also the reference checkpoint; writing there would replace it" in capsys.readouterr().err
    assert reference.read_bytes() == before
    assert main(["import-checkpoint", str(reference), str(same), "--heads", "4", "--force"]) == 0
    assert load(reference)[0].config.num_heads == 4


def test_loading_builds_the_model_without_initialising_it(tmp_path, monkeypatch):
    model = tiny_model(seed=3)
    path = save(tmp_path / "model.pt", model)
    initialised_on = []
    real_reset = HIN.reset_parameters

    def recording_reset(self):
        initialised_on.append(self.decoder.head.weight.device.type)
        real_reset(self)
    monkeypatch.setattr(HIN, "reset_parameters", recording_reset)
    loaded, _ = load(path)
    assert initialised_on == ["meta"]
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not any(t.is_meta for t in tensors)
    assert all(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.decoder.position_table, model.decoder.position_table)
    grid, region = tiny_features()
    with torch.no_grad():
        assert torch.equal(loaded.encode(grid, region).grid, model.encode(grid, region).grid)


def test_import_copies_the_reference_tensors(golden):
    state = reference_state(golden)
    model = import_reference(state, num_heads=4)
    with torch.no_grad():
        model.decoder.head.weight.zero_()
    assert state["decoder.fc.weight"].abs().sum() > 0


def test_a_full_disk_says_so_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save(tmp_path / "last.pt", tiny_model(seed=1))
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutOfSpaceError, match=rf"no space left on the device writing {path}; "
                                              r"the previous last\.pt is intact"):
        save(path, tiny_model(seed=2))
    assert path.read_bytes() == before
    with pytest.raises(OutOfSpaceError, match=r"no last\.pt was written"):
        save(tmp_path / "sub" / "last.pt", tiny_model(seed=2))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["last.pt"]


@pytest.mark.parametrize("value, pickled", [(..., "builtins.Ellipsis"),
                                            (np.array([object()], dtype=object), "builtins.object")])
def test_save_refuses_what_load_would_refuse_naming_the_entry(tmp_path, value, pickled):
    path = save(tmp_path / "best.pt", tiny_model(seed=1), vocabulary={"words": ["a"]})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=rf"^cannot save {path}: entry 'anything' holds "
                                              rf"{pickled}, which checkpoints may not hold"):
        save(path, tiny_model(seed=2), vocabulary={"words": ["a"]}, anything={"deep": [value]})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]      # no temporary left
    assert load(path)[1] == {"vocabulary": {"words": ["a"]}}
