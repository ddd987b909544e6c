"""CUDA paths (marked `cuda`: skipped without a CUDA device; `make gpu-check` runs them):
decoding on the GPU equals decoding on the CPU, bf16 autocast on the GPU, checkpoints
loaded onto the GPU."""

import pytest
import torch

from helpers.tiny import tiny_features, tiny_model
from hin.checkpoint import import_reference, load, save
from hin.config import DecodingConfig
from hin.decoding import decode
from hin.devices import autocast
from hin.training.xe import next_token_nll

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def test_fp32_beams_on_cuda_equal_cpu_beams_and_the_reference(golden):
    model = import_reference(golden["state_dicts"][0], num_heads=golden["config"]["h"])
    grid, region = golden["grid"].float(), golden["region"].float()
    settings = DecodingConfig(beam_size=golden["config"]["beam_size"],
                              max_len=golden["config"]["beam_max_len"], num_captions=3)
    on_cpu, cpu_logprobs = decode(model, grid, region, settings)
    on_cuda, cuda_logprobs = decode(model.to(CUDA), grid.to(CUDA), region.to(CUDA), settings)
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cuda.cpu(), on_cpu)
    torch.testing.assert_close(cuda_logprobs.cpu(), cpu_logprobs, atol=1e-4, rtol=0)
    eos = golden["config"]["eos_idx"]
    for ours, theirs in zip(on_cuda.cpu().flatten(0, 1).tolist(), golden["beam_seq"].flatten(0, 1).tolist()):
        end = theirs.index(eos) + 1 if eos in theirs else len(theirs)
        assert ours[:end] == theirs[:end]


def test_bf16_autocast_on_cuda_trains_in_bf16_with_float32_log_probs():
    model = tiny_model().to(CUDA).train()
    grid, region = (t.to(CUDA) for t in tiny_features())
    tokens = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 1]], device=CUDA)
    with torch.no_grad():
        exact = model(grid, region, tokens[:, :-1])
    with autocast(CUDA, "bf16"):
        logprobs = model(grid, region, tokens[:, :-1])
        total, count = next_token_nll(model, grid, region, tokens, model.config.pad_id)
    assert logprobs.dtype == torch.float32 and total.dtype == torch.float32
    torch.testing.assert_close(logprobs, exact, atol=0.1, rtol=0)
    (total / count).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_checkpoint_loads_onto_cuda_with_the_same_outputs(tmp_path):
    model = tiny_model()
    path = save(tmp_path / "tiny.pt", model)
    loaded, _ = load(path, map_location=CUDA)
    assert all(p.device.type == "cuda" for p in loaded.parameters())
    grid, region = tiny_features()
    tokens = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 3]])
    with torch.no_grad():
        expected = model(grid, region, tokens)
        got = loaded(grid.to(CUDA), region.to(CUDA), tokens.to(CUDA))
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=0)
