"""Properties the golden file cannot cover: depth, padding, causality, caching, ensembles."""

import pytest
import torch

from helpers.tiny import tiny_config, tiny_features, tiny_model
from hin.config import ConfigError, DecodingConfig, HINConfig
from hin.decoding import decode
from hin.model import HIN
from hin.model.layers import Attention, mask_to_bias


@pytest.mark.parametrize("layers", [1, 2, 4, 6])
def test_any_depth_builds_and_runs(layers):
    model = tiny_model(num_layers=layers)
    grid, region = tiny_features()
    enc = model.encode(grid, region)
    assert enc.grid.shape == (2, layers * 9, 32)
    assert enc.region.shape == (2, layers * 6, 32)
    logprobs = model.decode(torch.tensor([[2, 5, 6, 3]] * 2), enc)
    assert logprobs.shape == (2, 4, 20) and torch.isfinite(logprobs).all()
    seqs, _ = decode(model, grid, region, DecodingConfig(beam_size=3, max_len=6, num_captions=2))
    assert seqs.shape[:2] == (2, 2) and seqs.shape[2] <= 6


def test_all_regions_padded_for_one_image():
    model = tiny_model()
    grid, region = tiny_features()
    region[1] = 0
    tokens = torch.tensor([[2, 5, 6, 3]] * 2)
    with torch.no_grad():
        enc = model.encode(grid, region)
        both = model.decode(tokens, enc)
        alone = model.decode(tokens[:1], model.encode(grid[:1], region[:1]))
    assert enc.region_mask[1].all() and not enc.region_mask[0].any()
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)


def test_region_padding_rows_are_ignored():
    model = tiny_model()
    grid, region = tiny_features(batch=1)
    padded = torch.cat((region, torch.zeros(1, 4, region.shape[-1])), dim=1)
    tokens = torch.tensor([[2, 7, 8, 3]])
    with torch.no_grad():
        short = model.decode(tokens, model.encode(grid, region))
        long = model.decode(tokens, model.encode(grid, padded))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


def test_padding_tokens_do_not_change_other_positions():
    model = tiny_model()
    grid, region = tiny_features(batch=1)
    pad = model.config.pad_id
    with torch.no_grad():
        enc = model.encode(grid, region)
        plain = model.decode(torch.tensor([[2, 5, 6, 3]]), enc)
        padded = model.decode(torch.tensor([[2, 5, 6, 3, pad, pad]]), enc)
    torch.testing.assert_close(plain, padded[:, :4], atol=1e-5, rtol=0)


def test_decoder_is_causal():
    model = tiny_model()
    grid, region = tiny_features(batch=1)
    with torch.no_grad():
        enc = model.encode(grid, region)
        first = model.decode(torch.tensor([[2, 5, 6, 7, 8]]), enc)
        changed = model.decode(torch.tensor([[2, 5, 6, 11, 12]]), enc)
    torch.testing.assert_close(first[:, :3], changed[:, :3], atol=1e-6, rtol=0)
    assert not torch.allclose(first[:, 3:], changed[:, 3:])


def test_hypotheses_per_image_equal_separate_decoding():
    model = tiny_model()
    grid, region = tiny_features()
    tokens = torch.tensor([[[2, 5, 6, 3], [2, 9, 3, 1]], [[2, 4, 4, 4], [2, 7, 3, 1]]])
    with torch.no_grad():
        enc = model.encode(grid, region)
        together = model.decode(tokens, enc)
        for k in range(2):
            torch.testing.assert_close(together[:, k], model.decode(tokens[:, k], enc),
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_pad", [False, True])
def test_cached_steps_equal_teacher_forcing_at_every_step(with_pad):
    model = tiny_model(num_layers=3)
    grid, region = tiny_features()
    tokens = torch.tensor([[[2, 5, 6, 7, 8, 9]] * 3, [[2, 4, 11, 4, 13, 5]] * 3])
    tokens[:, 1, 2:] = 10
    if with_pad:   # <pad> mid-caption, twice in a row, and in one hypothesis only
        tokens[0, :, 2] = tokens[1, 0, 3:5] = tokens[1, 2, 1] = model.config.pad_id
    with torch.no_grad():
        enc = model.encode(grid, region)
        full = model.decode(tokens, enc)
        cache = model.init_cache(enc)
        for t in range(tokens.shape[-1]):
            step_logprobs, cache = model.step(tokens[:, :, t], cache)
            torch.testing.assert_close(step_logprobs, full[:, :, t], atol=1e-5, rtol=0)


def test_ensemble_of_two_copies_equals_the_model():
    model = tiny_model()
    grid, region = tiny_features(batch=3)
    single = decode(model, grid, region, DecodingConfig(beam_size=4, max_len=8, num_captions=4))
    double = decode([model, model], grid, region, DecodingConfig(beam_size=4, max_len=8, num_captions=4))
    assert torch.equal(single[0], double[0])
    torch.testing.assert_close(single[1], double[1], atol=1e-6, rtol=0)


def test_ensemble_members_must_share_vocabulary():
    with pytest.raises(ValueError, match="vocab_size"):
        decode([tiny_model(), tiny_model(vocab_size=21)], *tiny_features())


def test_beam_outputs_are_sorted_and_padded_after_eos():
    model = tiny_model(seed=3)
    eos, pad = model.config.eos_id, model.config.pad_id
    with torch.no_grad():   # make <eos> likely so beams finish at different lengths
        model.decoder.head.weight[eos] += 0.5 * model.decoder.head.weight.norm(dim=1).mean()
    grid, region = tiny_features(batch=4)
    seqs, logprobs = decode(model, grid, region, DecodingConfig(beam_size=3, max_len=12, num_captions=3))
    totals = logprobs.sum(-1)
    assert torch.all(totals[:, :-1] >= totals[:, 1:])
    finished = 0
    for image in range(4):
        for beam in range(3):
            ids = seqs[image, beam].tolist()
            if eos in ids:
                finished += 1
                end = ids.index(eos)
                assert all(i == pad for i in ids[end + 1:])
                assert torch.all(logprobs[image, beam, end + 1:] == 0)
    assert finished > 0


def test_greedy_is_beam_one():
    model = tiny_model()
    grid, region = tiny_features()
    ids, logprobs = (out[:, 0] for out in decode(model, grid, region,
                                                      DecodingConfig(beam_size=1, max_len=7)))
    assert ids.shape == logprobs.shape and ids.shape[0] == 2
    with torch.no_grad():
        enc = model.encode(grid, region)
        steps = torch.cat((torch.full((2, 1), model.config.bos_id), ids[:, :-1]), dim=1)
        forced = model.decode(steps, enc)
    torch.testing.assert_close(forced.max(-1).values, logprobs, atol=1e-5, rtol=0)
    assert torch.equal(forced.argmax(-1), ids)


def test_sinusoid_position_table():
    model = tiny_model(position_table="sinusoid")
    table = model.decoder.position_table
    assert torch.all(table[0] == 0)
    assert torch.isclose(table[1, 0], torch.sin(torch.tensor(1.0)))
    assert torch.isclose(table[3, 1], torch.cos(torch.tensor(3.0)))
    assert not any(name.endswith("position_table") for name, _ in model.named_parameters())


def test_initialisation_follows_spec():
    model = tiny_model()
    attention = model.decoder.layers[0].grid_att
    assert torch.all(attention.q_proj.bias == 0) and torch.all(attention.out_proj.bias == 0)
    assert model.decoder.word_emb.weight[model.config.pad_id].abs().sum() > 0


def test_wrong_feature_dim_is_a_clear_error():
    model = tiny_model()
    grid, region = tiny_features()
    with pytest.raises(ValueError, match=r"grid features must be \[batch, tokens, 12\].*got shape \[2, 9, 13\]"):
        model.encode(torch.randn(2, 9, 13), region)
    with pytest.raises(ValueError, match="region_dim=10"):
        model.encode(grid, torch.randn(2, 6, 2048))


def test_too_long_sequence_is_a_clear_error():
    model = tiny_model(max_positions=5)
    with pytest.raises(ValueError, match="exceeds the model's max_positions 5"):
        model.decode(torch.full((1, 6), 4), model.encode(*tiny_features(batch=1)))


@pytest.mark.parametrize("values, message", [
    (dict(d_model=30, num_heads=4), "divisible by num_heads"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(position_table="learned"), "position_table must be one of"),
    (dict(vocab_size=3), "outside the vocabulary"),
    (dict(dropout=1.5), "dropout"),
])
def test_config_validation(values, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**values)


def test_paper_size_parameter_count():
    with torch.device("meta"):
        model = HIN(HINConfig())
    assert model.num_parameters() == 79_316_486   # the paper's 79.3M


@pytest.mark.parametrize("padded", [False, True])
def test_a_shared_token_asks_like_attention_over_projected_keys(padded):
    """`Attention.shared_query` (the global tokens' shortcut: keys and values never projected) gives
    what attention over the projected memory gives: outputs, probabilities and every
    parameter's gradient (k_proj.bias included, which the scores' softmax ignores)."""
    torch.manual_seed(0)
    attention = Attention(32, 4, 0.0, residual=False).eval()
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        torch.nn.init.normal_(proj.bias)          # nonzero biases: the shortcut must carry them
    token, memory = torch.randn(1, 1, 32), torch.randn(3, 7, 32)
    mask = torch.zeros(3, 1, 1, 7, dtype=torch.bool)
    if padded:
        mask[1, ..., 4:] = True
    bias = mask_to_bias(mask)
    asked, expected = [], []
    out = attention.shared_query(token, memory, bias, probabilities=asked)
    grads = torch.autograd.grad(out.square().sum(), list(attention.parameters()))
    reference = attention(token.expand(3, -1, -1), memory, bias, probabilities=expected)
    expected_grads = torch.autograd.grad(reference.square().sum(), list(attention.parameters()))
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(asked[0], expected[0], atol=1e-6, rtol=1e-5)
    for (name, _), grad, expected_grad in zip(attention.named_parameters(), grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4, msg=name)
