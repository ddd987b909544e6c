"""Checkpoint formats: strict reference import, our atomic format, clear errors."""

import pytest
import torch

from conftest import tiny_model
from hin.checkpoint import CheckpointError, import_reference, load, reference_name, save
from hin.cli import main


def reference_state(golden):
    return dict(golden["state_dicts"][0])


def test_reference_names_cover_every_parameter(golden):
    model = import_reference(reference_state(golden), num_heads=4)
    names = {reference_name(n) for n in model.state_dict()}
    assert "encoder.layers.2.golbal_cls_region.attention.fc_o.bias" in names
    assert "decoder.layers.1.lnorm2.weight" in names
    assert "decoder.layers.0.self_cross_enc.layer_norm.weight" in names
    assert "decoder.pos_emb.weight" in names


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
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(truncated)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        import_reference(truncated)


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
    assert main(["import-checkpoint", str(bad), str(tmp_path / "o.pt")]) == 2
    assert "hin import-checkpoint: error:" in capsys.readouterr().err
