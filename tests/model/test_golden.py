"""The model reproduces the reference implementation's own outputs (golden file).

Tolerances (README, Faithfulness): encoder outputs and log-probabilities within 1e-4 absolute,
beam sequences identical up to and including <eos>.
"""

import pytest
import torch

from helpers.reference_checkpoints import as_if_pickled_by_numpy_1, save_like_reference_training
from hin.checkpoint import import_reference, load, save
from hin.checkpoint.record import REFERENCE, CheckpointRecord
from hin.cli import main
from hin.config import DecodingConfig
from hin.decoding import decode

ATOL = 1e-4


@pytest.fixture(scope="module", params=["imported", "saved-and-loaded", "reference-training-file",
                                        "numpy-1-training-file-via-cli"])
def model(request, golden, tmp_path_factory):
    """The golden weights, imported from a state_dict, through our own format, from a file
    saved the way the reference's train.py saves (numpy RNG state and floats inside), and
    from such a file as numpy 1.x pickled it, converted by `hin import-checkpoint`."""
    heads = golden["config"]["h"]
    folder = tmp_path_factory.mktemp("ckpt")
    if request.param == "reference-training-file":
        return import_reference(save_like_reference_training(golden["state_dicts"][0],
                                                             folder / "ref.pth"), num_heads=heads)
    if request.param == "numpy-1-training-file-via-cli":
        saved = save_like_reference_training(golden["state_dicts"][0], folder / "ref2.pth")
        reference = as_if_pickled_by_numpy_1(saved, folder / "ref.pth")
        assert main(["import-checkpoint", str(reference), str(folder / "hin.pt"),
                     "--heads", str(heads)]) == 0
        loaded, extra = load(folder / "hin.pt")
        assert CheckpointRecord.from_dict(extra).origin == REFERENCE
        return loaded
    imported = import_reference(golden["state_dicts"][0], num_heads=heads)
    if request.param == "imported":
        return imported
    path = save(folder / "small.pt", imported)
    loaded, extra = load(path)
    assert extra == {}
    return loaded


def features(golden):
    return golden["grid"].float(), golden["region"].float()


def test_config_inferred_from_shapes(model, golden):
    reference = golden["config"]
    assert model.config.num_layers == reference["N"]
    assert model.config.d_model == reference["d_model"]
    assert model.config.d_ff == reference["d_ff"]
    assert model.config.vocab_size == reference["vocab_size"]
    assert model.config.max_positions == reference["max_len"]


def test_encoder_outputs(model, golden):
    with torch.no_grad():
        enc = model.encode(*features(golden))
    torch.testing.assert_close(enc.grid, golden["enc_grid"], atol=ATOL, rtol=0)
    torch.testing.assert_close(enc.region, golden["enc_region"], atol=ATOL, rtol=0)
    assert torch.equal(enc.region_mask, golden["enc_region_mask"])


def test_teacher_forced_logprobs(model, golden):
    with torch.no_grad():
        logprobs = model.decode(golden["seq"], model.encode(*features(golden)))
    keep = golden["seq"] != golden["config"]["padding_idx"]
    torch.testing.assert_close(logprobs[keep], golden["logprobs"][keep], atol=ATOL, rtol=0)


def _up_to_eos(ids, eos):
    ids = ids.tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.mark.parametrize("out_size", [3, 1])
def test_beam_search(model, golden, out_size):
    cfg = golden["config"]
    settings = DecodingConfig(beam_size=cfg["beam_size"], max_len=cfg["beam_max_len"],
                              num_captions=out_size)
    seqs, logprobs = decode(model, *features(golden), settings)
    expected_seq = golden["beam_seq"] if out_size == 3 else golden["beam1_seq"][:, None]
    expected_lp = golden["beam_logprobs"] if out_size == 3 else golden["beam1_logprobs"][:, None]
    assert seqs.shape[:2] == (2, out_size)
    for image in range(2):
        for beam in range(out_size):
            assert (_up_to_eos(seqs[image, beam], cfg["eos_idx"])
                    == _up_to_eos(expected_seq[image, beam], cfg["eos_idx"]))
    steps = seqs.shape[-1]
    torch.testing.assert_close(logprobs, expected_lp[..., :steps], atol=ATOL, rtol=0)
    assert torch.all(expected_lp[..., steps:] == 0)   # anything cut off was past every <eos>
