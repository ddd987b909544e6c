"""bf16 on CPU, under autocast (training) and with the weights cast to bfloat16 (decoding):
the model runs with float32 log-probabilities, its cached steps equal its teacher forcing,
padding masks still hold, and it stays near fp32; fp32 is left untouched by either."""

import pytest
import torch

from helpers.tiny import tiny_features, tiny_model
from hin.config import DecodingConfig
from hin.decoding import Ensemble, decode
from hin.devices import autocast
from hin.model.layers import FUSED_MIN_SCORES, Attention, mask_to_bias

CPU = torch.device("cpu")
PAD = 1



def step_through(model, tokens, enc):
    """The cached decoder run over `tokens` [B, K, T] one step at a time -> (log-probs
    [B, K, T, V], the final cache), to compare with teacher forcing."""
    cache = model.init_cache(enc)
    stepped = []
    for t in range(tokens.shape[-1]):
        logprobs, cache = model.step(tokens[:, :, t], cache)
        stepped.append(logprobs)
    return torch.stack(stepped, dim=2), cache


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
            stepped, _ = step_through(model, tokens, enc)
    assert enc.grid.dtype == torch.bfloat16 and forced.dtype == torch.float32
    assert torch.isfinite(forced).all()
    torch.testing.assert_close(stepped, forced, atol=2e-2, rtol=0)
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


def test_bf16_weights_decode_in_bfloat16_with_float32_logprobs_close_to_fp32():
    model = tiny_model(num_layers=3)
    grid, region = tiny_features()
    region[1, 3:] = 0                                # padded regions
    tokens = torch.tensor([[[2, 5, PAD, 7, 8]] * 2, [[2, 4, 11, 4, 13]] * 2])
    ensemble = Ensemble(model)
    (cast,) = ensemble.cast("bf16")
    assert all(p.dtype == torch.bfloat16 for p in cast.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())   # the caller's model kept
    assert ensemble.cast("bf16")[0] is cast                              # cast once, then kept
    assert Ensemble(cast).cast("bf16") == (cast,)                      # a bf16 model is not cast again
    with torch.inference_mode():
        exact = model.decode(tokens, model.encode(grid, region))
        enc = cast.encode(grid, region)
        forced = cast.decode(tokens, enc)
        stepped, cache = step_through(cast, tokens, enc)
    assert enc.grid.dtype == enc.region.dtype == torch.bfloat16
    assert {cache.memory[0].grid.key.dtype, cache.self_kv[0].key.dtype} == {torch.bfloat16}
    assert forced.dtype == stepped.dtype == torch.float32
    torch.testing.assert_close(stepped, forced, atol=2e-2, rtol=0)
    torch.testing.assert_close(forced, exact, atol=0.1, rtol=0)
    assert not torch.equal(forced, exact)


def test_bf16_weights_beam_search_finds_nearly_the_fp32_captions():
    """bf16 search finds fp32's best caption for (nearly) every image, with the sequence
    log-probabilities within bf16's rounding."""
    model = tiny_model()
    grid, region = tiny_features(batch=8)
    fp32 = decode(model, grid, region, DecodingConfig(beam_size=3, max_len=8))
    bf16 = decode(model, grid, region, DecodingConfig(beam_size=3, max_len=8, precision="bf16"))
    agree = sum(torch.equal(a, b) for a, b in zip(fp32[0][:, 0], bf16[0][:, 0]))
    assert agree >= 7
    torch.testing.assert_close(bf16[1].sum(-1), fp32[1].sum(-1), atol=0.1, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_search_runs_in_the_asked_precision(precision):
    model = tiny_model()
    grid, region = tiny_features(batch=3)
    settings = DecodingConfig(beam_size=3, max_len=8, num_captions=2, precision=precision)
    ids, logprobs = decode(model, grid, region, settings)
    plain_ids, plain_logprobs = decode(model, grid, region,
                                            DecodingConfig(beam_size=3, max_len=8, num_captions=2))
    assert ids.shape[:2] == (3, 2) and logprobs.dtype == torch.float32
    if precision == "fp32":
        assert torch.equal(ids, plain_ids) and torch.equal(logprobs, plain_logprobs)
    else:
        assert not torch.equal(logprobs, plain_logprobs)
    assert model.dtype == torch.float32             # decoding in bf16 casts a copy


def test_large_bf16_attention_without_autograd_takes_the_fused_kernel_with_the_same_result():
    """The encoder's big self-attention in bf16 decoding runs PyTorch's fused kernel; it must
    agree with the explicit float32-softmax path that training (autograd) takes."""
    torch.manual_seed(0)
    attention = Attention(32, 4, 0.0).to(torch.bfloat16)
    tokens = int(FUSED_MIN_SCORES ** 0.5) + 2
    x = torch.randn(2, tokens, 32, dtype=torch.bfloat16)
    hidden = torch.zeros(2, 1, 1, tokens, dtype=torch.bool)
    hidden[1, ..., -5:] = True
    bias = mask_to_bias(hidden, torch.bfloat16)
    called = []
    real = torch.nn.functional.scaled_dot_product_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                      lambda *a, **k: called.append(1) or real(*a, **k))
        with torch.no_grad():
            fused = attention(x, x, bias)
        explicit = attention(x, x, bias).detach()
    assert called == [1]
    torch.testing.assert_close(fused.float(), explicit.float(), atol=3e-2, rtol=0)
