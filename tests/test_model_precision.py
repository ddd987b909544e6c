"""bf16 autocast on CPU: the model runs with float32 log-probabilities, its cached steps
equal its teacher forcing, padding masks still hold, and it stays near fp32; fp32 is left
untouched by autocast being available."""

import pytest
import torch

from conftest import tiny_features, tiny_model
from hin.config import DecodingConfig
from hin.decoding import beam_search, search
from hin.devices import autocast

CPU = torch.device("cpu")
PAD = 1


def test_bf16_forward_is_finite_close_to_fp32_and_cached_steps_equal_teacher_forcing():
    model = tiny_model(num_layers=3)
    grid, region = tiny_features()
    region[1] = 0                                    # one image with every region padded
    tokens = torch.tensor([[[2, 5, PAD, 7, 8]] * 2, [[2, 4, 11, 4, 13]] * 2])
    with torch.no_grad():
        exact = model.decode(tokens, model.encode(grid, region))
        with autocast(CPU, "bf16"):
            enc = model.encode(grid, region)
            forced = model.decode(tokens, enc)
            cache = model.init_cache(enc)
            stepped = []
            for t in range(tokens.shape[-1]):
                logprobs, cache = model.step(tokens[:, :, t], cache)
                stepped.append(logprobs)
    assert enc.grid.dtype == torch.bfloat16 and forced.dtype == torch.float32
    assert torch.isfinite(forced).all()
    torch.testing.assert_close(torch.stack(stepped, dim=2), forced, atol=2e-2, rtol=0)
    torch.testing.assert_close(forced, exact, atol=0.1, rtol=0)
    assert not torch.equal(forced, exact)            # autocast did change the arithmetic


def test_region_padding_is_ignored_in_bf16():
    model = tiny_model()
    grid, region = tiny_features(batch=1)
    padded = torch.cat((region, torch.zeros(1, 4, region.shape[-1])), dim=1)
    tokens = torch.tensor([[2, 7, 8, 3]])
    with torch.no_grad(), autocast(CPU, "bf16"):
        short = model.decode(tokens, model.encode(grid, region))
        long = model.decode(tokens, model.encode(grid, padded))
    torch.testing.assert_close(short, long, atol=2e-2, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_search_runs_in_the_asked_precision(precision):
    model = tiny_model()
    grid, region = tiny_features(batch=3)
    settings = DecodingConfig(beam_size=3, max_len=8, num_captions=2, precision=precision)
    ids, logprobs = search(model, grid, region, settings)
    plain_ids, plain_logprobs = beam_search(model, grid, region, beam_size=3, max_len=8,
                                            out_size=2)
    assert ids.shape[:2] == (3, 2) and logprobs.dtype == torch.float32
    if precision == "fp32":
        assert torch.equal(ids, plain_ids) and torch.equal(logprobs, plain_logprobs)
    else:
        assert not torch.equal(logprobs, plain_logprobs)
