"""The decoding options (DecodingConfig: length penalty, min_len, no_repeat_ngram, sampling,
diverse beam search) do what they say on untrained models whose captions repeat words and
end early. Their defaults (alpha 0, no min_len, ...) keep the reference's rule: that is
model/test_golden.py's beam search, decoded through the same code."""

import dataclasses
import math

import pytest
import torch

import hin.decoding
from helpers.tiny import tiny_features, tiny_model
from hin.config import ConfigError, DecodingConfig
from hin.decoding.search import restrict
from hin.errors import UsageError

EOS, PAD = 3, 1


def decode(model, grid, region, **settings):
    return hin.decoding.decode(model, grid, region, DecodingConfig(**settings))


def words_of(ids):
    """Each caption's ids before <eos> (all of them when it has none: ids after <eos> are
    <pad>, but an untrained model may also emit <pad> as a word)."""
    return [[caption[:caption.index(EOS)] if EOS in caption else caption for caption in image]
            for image in ids.tolist()]


def lengths_of(ids):
    """Words up to and including <eos> (a <pad> an untrained model emits mid-caption counts)."""
    is_eos = ids == EOS
    first_eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, ids.shape[-1])
    return first_eos.float()


def repeated_ngrams(caption, n):
    grams = [tuple(caption[i:i + n]) for i in range(len(caption) - n + 1)]
    return len(grams) - len(set(grams))


def greedy(model, grid, region, max_len=12):
    return decode(model, grid, region, beam_size=1, max_len=max_len)


@pytest.mark.parametrize("seed", [0, 3, 8])
def test_sampling_with_top_k_1_or_temperature_near_0_equals_greedy(seed):
    model = tiny_model(seed=seed)
    grid, region = tiny_features(batch=4)
    ids, logprobs = greedy(model, grid, region)
    for options in (dict(top_k=1), dict(temperature=1e-6)):
        sampled, sampled_logprobs = decode(model, grid, region, sample=True, max_len=12,
                                           num_captions=2, seed=seed, **options)
        for caption in range(2):
            assert torch.equal(sampled[:, caption], ids[:, 0]), options
            torch.testing.assert_close(sampled_logprobs[:, caption], logprobs[:, 0])


def test_sampling_is_reproducible_by_seed_different_across_seeds_and_batch_independent():
    model = tiny_model(seed=2)
    grid, region = tiny_features(batch=3)
    settings = dict(sample=True, num_captions=4, max_len=10)
    first, _ = decode(model, grid, region, seed=11, **settings)
    again, _ = decode(model, grid, region, seed=11, **settings)
    other, _ = decode(model, grid, region, seed=12, **settings)
    alone, _ = decode(model, grid[1:2], region[1:2], seed=11, **settings)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(alone[0, :, :], first[1, :, :alone.shape[-1]])
    assert len({tuple(c) for c in words_of(first)[0]}) > 1, "four samples, one caption"


def test_samples_come_best_first_by_length_penalised_score():
    model = tiny_model(seed=4)
    grid, region = tiny_features(batch=2)
    for alpha in (0.0, 1.0):
        ids, logprobs = decode(model, grid, region, sample=True, num_captions=5, seed=3,
                               max_len=10, length_penalty=alpha)
        lengths = lengths_of(ids)
        scores = logprobs.sum(-1) / lengths ** alpha
        assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_top_p_keeps_only_the_most_probable_words():
    model = tiny_model(seed=6)
    grid, region = tiny_features(batch=2)
    ids, logprobs = decode(model, grid, region, sample=True, num_captions=8, seed=0, max_len=6,
                           top_p=1e-6)
    best, best_logprobs = greedy(model, grid, region, max_len=6)
    assert torch.equal(ids, best.expand(-1, 8, -1))     # a tiny top_p keeps only the best word


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("sample", [False, True])
def test_no_ngram_is_repeated_with_no_repeat_ngram(n, sample):
    model = tiny_model(seed=1, vocab_size=12)
    grid, region = tiny_features(batch=4)
    settings = dict(beam_size=4, num_captions=4, max_len=20, sample=sample, seed=1)
    plain = [c for image in words_of(decode(model, grid, region, **settings)[0]) for c in image]
    assert sum(repeated_ngrams(c, n) for c in plain) > 0, "the test needs repeating captions"
    ids, _ = decode(model, grid, region, no_repeat_ngram=n, **settings)
    captions = [c for image in words_of(ids) for c in image]
    assert all(repeated_ngrams(c, n) == 0 for c in captions), captions


@pytest.mark.parametrize("sample", [False, True])
def test_min_len_words_come_before_eos(sample):
    model = tiny_model(seed=0)
    grid, region = tiny_features(batch=4)
    settings = dict(beam_size=3, num_captions=3, max_len=14, sample=sample, seed=2)
    plain = decode(model, grid, region, **settings)[0]
    shortest = min(len(c) for image in words_of(plain) for c in image)
    ids, _ = decode(model, grid, region, min_len=shortest + 3, **settings)
    assert min(len(c) for image in words_of(ids) for c in image) >= shortest + 3


def test_a_rule_that_bans_every_word_is_refused():
    model = tiny_model(seed=0, vocab_size=6)
    grid, region = tiny_features(batch=1, config=model.config)
    with pytest.raises(UsageError, match="leaves no word to choose"):
        decode(model, grid, region, beam_size=2, max_len=12, min_len=10, no_repeat_ngram=1)


def test_length_penalty_ranks_by_score_per_length_and_lengthens_captions():
    model = tiny_model(seed=3)
    grid, region = tiny_features(batch=6)
    settings = dict(beam_size=5, num_captions=5, max_len=16)
    mean_length = {}
    for alpha in (0.0, 2.0):
        ids, logprobs = decode(model, grid, region, length_penalty=alpha, **settings)
        lengths = lengths_of(ids)
        scores = logprobs.sum(-1) / lengths ** alpha
        assert (scores[:, :-1] >= scores[:, 1:] - 1e-6).all()
        mean_length[alpha] = lengths[:, 0].mean().item()
    assert mean_length[2.0] > mean_length[0.0]


def test_diverse_groups_give_one_distinct_caption_each():
    model = tiny_model(seed=1, vocab_size=40)
    grid, region = tiny_features(batch=3)
    ids, logprobs = decode(model, grid, region, beam_size=6, diversity_groups=3,
                           diversity_strength=100.0, num_captions=3, max_len=12)
    assert ids.shape[:2] == (3, 3)
    for image in words_of(ids):
        assert len({tuple(c) for c in image}) == 3, image
    scores = logprobs.sum(-1)
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "groups' captions best first"
    same, _ = decode(model, grid, region, beam_size=6, diversity_groups=3, diversity_strength=0.0,
                     num_captions=3, max_len=12)
    assert all(len({tuple(c) for c in image}) == 1 for image in words_of(same)), \
        "without a diversity penalty every group searches alike"


def test_one_group_is_plain_beam_search_whatever_the_strength():
    model = tiny_model(seed=2)
    grid, region = tiny_features(batch=2)
    plain = decode(model, grid, region, beam_size=4, num_captions=2, max_len=10)
    strong = decode(model, grid, region, beam_size=4, num_captions=2, max_len=10,
                    diversity_strength=9.0)
    assert torch.equal(plain[0], strong[0])


def test_restrict_bans_eos_before_min_len_and_words_completing_a_seen_ngram():
    history = torch.tensor([[[5, 6, 7, 5]]])          # "5 6" seen; ends in 5
    scores = restrict(torch.zeros(1, 1, 10), history, DecodingConfig(no_repeat_ngram=2, min_len=5),
                      eos_id=EOS)
    assert [w for w in range(10) if math.isinf(scores[0, 0, w])] == [EOS, 6]
    scores = restrict(torch.zeros(1, 1, 10), history, DecodingConfig(no_repeat_ngram=1), EOS)
    assert [w for w in range(10) if math.isinf(scores[0, 0, w])] == [5, 6, 7]


@pytest.mark.parametrize("options,message", [
    (dict(top_p=0.0), "top_p must be in"), (dict(top_p=1.5), "top_p must be in"),
    (dict(temperature=0.0), "temperature must be a number above 0"),
    (dict(beam_size=5, diversity_groups=2), "must divide the beam size"),
    (dict(beam_size=4, diversity_groups=2, num_captions=3), "cannot exceed DecodingConfig.diversity_groups"),
    (dict(min_len=20, max_len=20), r"min_len \(20\) must be below DecodingConfig.max_len"),
    (dict(no_repeat_ngram=-1), "no_repeat_ngram must be a non-negative integer"),
    (dict(top_k=-2), "top_k must be a non-negative integer"),
    (dict(seed=-1), "seed must be an integer from 0"), (dict(seed=True), "seed must be"),
    (dict(sample=True, beam_size=4, diversity_groups=2), "sampling has no beam to split"),
    (dict(diversity_strength=-1.0), "diversity_strength must be a number >= 0"),
    (dict(length_penalty=float("nan")), "length_penalty must be a number"),
    (dict(sample="yes"), "sample must be true or false"),
])
def test_decoding_options_are_checked_with_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as error:
        DecodingConfig(**options)
    assert "\n" not in str(error.value)


def test_sampling_may_return_more_captions_than_the_beam_size():
    assert DecodingConfig(sample=True, beam_size=1, num_captions=5).num_captions == 5


NON_DEFAULT = {"beam_size": ("--beam", "4"), "max_len": ("--max-len", "9"),
               "num_captions": ("--top-k", "2"), "collapse_repeats": ("--keep-repeats",),
               "precision": ("--precision", "bf16"), "length_penalty": ("--length-penalty", "0.7"),
               "min_len": ("--min-len", "3"), "no_repeat_ngram": ("--no-repeat-ngram", "2"),
               "sample": ("--sample",), "temperature": ("--temperature", "0.8"),
               "top_k": ("--sample-top-k", "5"), "top_p": ("--top-p", "0.9"),
               "seed": ("--seed", "42"), "diversity_groups": ("--diversity-groups", "1"),
               "diversity_strength": ("--diversity-strength", "1.5")}
EXPECTED = DecodingConfig(beam_size=4, max_len=9, num_captions=2, collapse_repeats=False,
                          precision="bf16", length_penalty=0.7, min_len=3, no_repeat_ngram=2,
                          sample=True, temperature=0.8, top_k=5, top_p=0.9, seed=42,
                          diversity_groups=1, diversity_strength=1.5)


@pytest.mark.parametrize("command", ["caption", "evaluate", "explain", "serve"])
def test_every_decoding_option_is_a_flag_of_every_command_that_captions(command):
    from hin.cli import build_parser
    from hin.cli.options import decoding

    assert set(NON_DEFAULT) == {f.name for f in dataclasses.fields(DecodingConfig)}
    positional = {"evaluate": ["--split", "features"]}.get(command, [])
    flags = [part for name, parts in NON_DEFAULT.items() for part in parts
             if command in ("caption", "serve") or name != "num_captions"]
    args = build_parser().parse_args([command, *positional, "--checkpoint", "x.pt", *flags])
    expected = EXPECTED if command in ("caption", "serve") else \
        dataclasses.replace(EXPECTED, num_captions=1)
    assert decoding(args) == expected
    # diversity_groups > 1 cannot go with --sample: checked alone
    diverse = build_parser().parse_args([command, *positional, "--checkpoint", "x.pt",
                                         "--beam", "4", "--diversity-groups", "2"])
    assert decoding(diverse).diversity_groups == 2
