"""A <pad> input mid-caption (untrained models emit one) is decoded alike by the cached
step and by teacher forcing: hidden from later positions, outputs zeroed (a uniform
next-word distribution after it), later tokens at their own positions. So beam search
finds the same beams as a search that re-scores every prefix by teacher forcing."""

import math

import torch

from helpers.tiny import tiny_features, tiny_model
from hin.config import DecodingConfig
from hin.decoding import decode, search

PAD, EOS = 1, 3


class TeacherForcedRescorer:
    """A beam-search stepper without a cache: each step decodes every hypothesis's whole
    prefix by teacher forcing and reads the last position."""

    def __init__(self, model, enc):
        self.model, self.enc = model, enc
        self.prefixes = None

    def step(self, tokens):
        tokens = tokens[..., None]
        self.prefixes = tokens if self.prefixes is None else torch.cat((self.prefixes, tokens), -1)
        return self.model.decode(self.prefixes, self.enc)[:, :, -1]

    def reorder(self, source):
        self.prefixes = self.prefixes.gather(
            1, source[..., None].expand(-1, -1, self.prefixes.shape[-1]))


def model_that_emits_pad():
    """Six words (four of them specials), untrained, float64 so that equal scores stay
    equal; this seed's beams hold <pad> before <eos>."""
    return tiny_model(seed=5, vocab_size=6).double()


def test_the_next_word_distribution_after_pad_is_uniform():
    model = model_that_emits_pad()
    grid, region = (f.double() for f in tiny_features(config=model.config))
    with torch.no_grad():
        cache = model.init_cache(model.encode(grid, region))
        for token in (2, 4, PAD):
            logprobs, cache = model.step(torch.full((2, 1), token), cache)
    assert torch.equal(logprobs, torch.full_like(logprobs, -math.log(6)))


def test_beams_with_pad_before_eos_equal_teacher_forced_rescoring():
    model = model_that_emits_pad()
    grid, region = (f.double() for f in tiny_features(batch=4, config=model.config))
    settings = DecodingConfig(beam_size=3, max_len=10, num_captions=3)
    cached, cached_logprobs = decode(model, grid, region, settings)
    with torch.no_grad():
        rescorer = TeacherForcedRescorer(model, model.encode(grid, region))
        forced, forced_logprobs = search(rescorer, 4, model.config, grid.device,
                                                    settings)
    assert torch.equal(cached, forced)
    torch.testing.assert_close(cached_logprobs, forced_logprobs, atol=1e-9, rtol=0)
    pad_before_eos = [ids for ids in cached.flatten(0, 1).tolist()
                      if EOS in ids and PAD in ids[:ids.index(EOS)]]
    assert len(pad_before_eos) >= 5, cached
