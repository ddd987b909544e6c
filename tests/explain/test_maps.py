"""hin.explain.attention_maps returns the model's real attention (docs/model.md §1, §3, §5).

The reference attention is recomputed here, independently of hin's layers, from the
reference implementation's own state_dict (its parameter names) and the inputs each block
received: q = x Wq + bq, k = m Wk + bk, split into heads, softmax(q kᵀ / sqrt(d_k)) with
masked keys set to -1e9, mean over heads.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny import tiny_features, tiny_model
from hin.checkpoint import import_reference
from hin.config import DecodingConfig
from hin.decoding import decode
from hin.errors import UsageError
from hin.explain import attention_maps
from hin.model import AttentionTrace

TOLERANCE = 1e-5
GOLDEN_TOLERANCE = 1e-4    # ours vs the reference's recorded outputs (model/test_golden.py)


def reference_attention(state, prefix, query, memory, heads, hidden=None):
    """Mean-over-heads probabilities [B, Q, N] of the reference's attention block `prefix`;
    `hidden` [B, 1 or Q, N] is True at masked keys."""
    def project(x, name):
        weight, bias = state[f"{prefix}.attention.{name}.weight"], state[f"{prefix}.attention.{name}.bias"]
        y = x @ weight.float().T + bias.float()
        return y.unflatten(-1, (heads, -1)).transpose(1, 2)        # [B, h, n, d_k]

    q, k = project(query, "fc_q"), project(memory, "fc_k")
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if hidden is not None:
        scores = scores.masked_fill(hidden[:, None], -1e9)
    return scores.softmax(dim=-1).mean(dim=1)


def reference_self_attention_block(state, prefix, x, heads, hidden):
    """LayerNorm(x + fc_o(attention)) of the reference's residual attention block."""
    def linear(y, name):
        return y @ state[f"{prefix}.attention.{name}.weight"].float().T + state[f"{prefix}.attention.{name}.bias"]

    def split(y):
        return y.unflatten(-1, (heads, -1)).transpose(1, 2)

    q, k, v = split(linear(x, "fc_q")), split(linear(x, "fc_k")), split(linear(x, "fc_v"))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(hidden[:, None], -1e9)
    out = linear((scores.softmax(-1) @ v).transpose(1, 2).flatten(-2), "fc_o")
    norm_w, norm_b = state[f"{prefix}.layer_norm.weight"], state[f"{prefix}.layer_norm.bias"]
    return F.layer_norm(x + out, (x.shape[-1],), norm_w.float(), norm_b.float())


def capture_inputs(modules):
    """Positional inputs each module receives on its next call; hooks removed by the caller."""
    seen = [None] * len(modules)
    handles = []
    for i, module in enumerate(modules):
        def keep(module, args, i=i):
            seen[i] = args
        handles.append(module.register_forward_pre_hook(keep))
    return seen, handles


@pytest.fixture(scope="module")
def reference(golden):
    state = golden["state_dicts"][0]
    model = import_reference(state, num_heads=golden["config"]["h"])
    return model, state, golden["config"]["h"]


def test_encoder_maps_equal_reference_attention(reference, golden):
    model, state, heads = reference
    grid, region = golden["grid"].float(), golden["region"].float()
    inputs, handles = capture_inputs(list(model.encoder.layers))
    try:
        maps = attention_maps(model, grid, region)
    finally:
        for handle in handles:
            handle.remove()
    hidden = golden["enc_region_mask"][:, 0]                                     # [B, 1, Nr]
    ng, nr = grid.shape[1], region.shape[1]

    # The blocks' inputs are the reference's: layer 0 reads the input projections, layer 1
    # reads level 1, which the reference's encoder output starts with.
    def projection(x, prefix):
        y = torch.relu(x @ state[f"{prefix}.0.weight"].float().T + state[f"{prefix}.0.bias"])
        return F.layer_norm(y, (y.shape[-1],), state[f"{prefix}.3.weight"], state[f"{prefix}.3.bias"])
    torch.testing.assert_close(inputs[0][0], projection(grid, "encoder.grid_proj"), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(inputs[0][1], projection(region, "encoder.region_proj"), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(inputs[1][0], golden["enc_grid"][:, :ng], atol=GOLDEN_TOLERANCE, rtol=0)
    torch.testing.assert_close(inputs[1][1], golden["enc_region"][:, :nr], atol=GOLDEN_TOLERANCE, rtol=0)

    assert maps.encoder_grid.shape == (2, golden["config"]["N"], ng)
    assert maps.encoder_region.shape == (2, golden["config"]["N"], nr)
    for layer, (layer_grid, layer_region, *_) in enumerate(inputs):
        prefix = f"encoder.layers.{layer}"
        token_grid = state[f"{prefix}.cls_grid"].float().expand(2, -1, -1)
        token_region = state[f"{prefix}.cls_region"].float().expand(2, -1, -1)
        expected_grid = reference_attention(state, f"{prefix}.global_grid", token_grid, layer_grid, heads)
        expected_region = reference_attention(state, f"{prefix}.global_region", token_region, layer_region,
                                              heads, hidden)
        torch.testing.assert_close(maps.encoder_grid[:, layer], expected_grid[:, 0], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(maps.encoder_region[:, layer], expected_region[:, 0], atol=TOLERANCE,
                                   rtol=0)


def test_decoder_maps_equal_reference_attention(reference, golden):
    model, state, heads = reference
    grid, region, tokens = golden["grid"].float(), golden["region"].float(), golden["seq"]
    pad = golden["config"]["padding_idx"]
    layers = list(model.decoder.layers)
    inputs, handles = capture_inputs(layers)
    gate_inputs, gate_handles = capture_inputs([layer.gate for layer in layers])
    try:
        maps = attention_maps(model, grid, region, tokens)
    finally:
        for handle in handles + gate_handles:
            handle.remove()
    with torch.no_grad():
        enc = model.encode(grid, region)
    torch.testing.assert_close(enc.grid, golden["enc_grid"], atol=GOLDEN_TOLERANCE, rtol=0)
    torch.testing.assert_close(enc.region, golden["enc_region"], atol=GOLDEN_TOLERANCE, rtol=0)

    batch, steps = tokens.shape
    keep = (tokens != pad)
    positions = torch.arange(1, steps + 1).expand_as(tokens) * keep
    embedded = state["decoder.word_emb.weight"][tokens] + state["decoder.pos_emb.weight"][positions]
    torch.testing.assert_close(inputs[0][0][:, 0], embedded.float(), atol=TOLERANCE, rtol=0)

    self_hidden = torch.ones(steps, steps, dtype=torch.bool).triu(1) | ~keep[:, None, :]   # [B, T, T]
    region_hidden = golden["enc_region_mask"][:, 0]
    assert maps.decoder_grid.shape == (batch, len(layers), steps, grid.shape[1])
    assert maps.decoder_region.shape == (batch, len(layers), steps, region.shape[1])
    assert maps.decoder_gate.shape == (batch, len(layers), steps)
    for layer, args in enumerate(inputs):
        prefix = f"decoder.layers.{layer}"
        x = args[0][:, 0]
        s = reference_self_attention_block(state, f"{prefix}.self_att", x, heads, self_hidden) * keep[..., None]
        level_grid, level_region = enc.level(layer)
        expected_grid = reference_attention(state, f"{prefix}.grid_att", s, level_grid, heads)
        expected_region = reference_attention(state, f"{prefix}.region_att", s, level_region, heads,
                                              region_hidden)
        torch.testing.assert_close(maps.decoder_grid[:, layer], expected_grid, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(maps.decoder_region[:, layer], expected_region, atol=TOLERANCE, rtol=0)
        gate_in = gate_inputs[layer][0]
        z = torch.sigmoid(gate_in @ state[f"{prefix}.gate.0.weight"].float().T + state[f"{prefix}.gate.0.bias"])
        torch.testing.assert_close(maps.decoder_gate[:, layer], z.mean(-1), atol=TOLERANCE, rtol=0)


def padded_features():
    grid, region = tiny_features(batch=3, grid_tokens=9, regions=6)
    region[1, 4:] = 0        # two padded slots
    region[2] = 0            # no regions at all
    return grid, region


def test_rows_sum_to_one_and_padded_regions_get_zero():
    model = tiny_model()
    grid, region = padded_features()
    tokens = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 1], [2, 4, 3, 1, 1]])
    maps = attention_maps(model, grid, region, tokens)
    ones = torch.ones(3, model.config.num_layers)
    torch.testing.assert_close(maps.encoder_grid.sum(-1), ones)
    torch.testing.assert_close(maps.encoder_region[:2].sum(-1), ones[:2])
    torch.testing.assert_close(maps.decoder_grid.sum(-1), torch.ones(3, model.config.num_layers, 5))
    torch.testing.assert_close(maps.decoder_region[:2].sum(-1), torch.ones(2, model.config.num_layers, 5))
    assert maps.region_mask.tolist()[1] == [False] * 4 + [True] * 2
    assert torch.all(maps.encoder_region[1, :, 4:] == 0) and torch.all(maps.encoder_region[1, :, :4] > 0)
    assert torch.all(maps.decoder_region[1, :, :, 4:] == 0)
    assert torch.all(maps.encoder_region[2] == 0) and torch.all(maps.decoder_region[2] == 0)
    assert torch.all((maps.decoder_gate > 0) & (maps.decoder_gate < 1))


def test_maps_leave_outputs_and_decoding_unchanged():
    model = tiny_model()
    grid, region = padded_features()
    tokens = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 1], [2, 4, 3, 1, 1]])
    settings = DecodingConfig(beam_size=3, max_len=8, num_captions=2)
    before_ids, before_logprobs = decode(model, grid, region, settings)
    with torch.no_grad():
        plain = model.decode(tokens, model.encode(grid, region))
        trace = AttentionTrace()
        traced = model.decode(tokens, model.encode(grid, region, trace), trace)
    assert torch.equal(plain, traced)
    assert len(trace.encoder_grid) == len(trace.decoder_gate) == model.config.num_layers
    attention_maps(model, grid, region, tokens)
    after_ids, after_logprobs = decode(model, grid, region, settings)
    assert torch.equal(before_ids, after_ids) and torch.equal(before_logprobs, after_logprobs)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_tokens_must_match_the_batch():
    model = tiny_model()
    grid, region = tiny_features(batch=2)
    with pytest.raises(UsageError, match="tokens must be"):
        attention_maps(model, grid, region, torch.tensor([[2, 5, 3]]))


def test_decoder_maps_need_tokens():
    model = tiny_model()
    grid, region = tiny_features(batch=2)
    with pytest.raises(UsageError, match="no decoder maps"):
        attention_maps(model, grid, region).decoder_maps()
    tokens = torch.tensor([[2, 5, 3], [2, 6, 3]])
    maps = attention_maps(model, grid, region, tokens)
    assert all(got is wanted for got, wanted in zip(
        maps.decoder_maps(), (maps.decoder_grid, maps.decoder_region, maps.decoder_gate)))
