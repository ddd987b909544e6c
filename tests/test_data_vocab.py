"""Vocabulary: the tokenisation rule, ordering, encode/decode, JSON and the safe legacy import."""

import pickle

import pytest

from data_files import FIXTURES
from hin.data.vocab import Vocabulary, VocabularyError, tokenize

LEGACY = FIXTURES / "vocab_m2_legacy.pkl"


@pytest.fixture(scope="module")
def legacy() -> Vocabulary:
    return Vocabulary.from_legacy_pickle(LEGACY)


def test_legacy_pickle_gives_the_standard_vocabulary(legacy):
    assert len(legacy) == 10201
    assert legacy.words[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]
    assert (legacy.unk_id, legacy.pad_id, legacy.bos_id, legacy.eos_id) == (0, 1, 2, 3)
    known = {"a": 4, "on": 5, "man": 12, "dog": 46, "red": 48, "cat": 49, "giraffe": 120,
             "square": 763, "circle": 1670, "zips": 10200}
    assert {word: legacy.index(word) for word in known} == known
    assert legacy.counts[legacy.index("a")] == 977997
    assert legacy.index("never-seen-word") == legacy.unk_id


def test_legacy_order_is_the_standard_rule(legacy):
    rebuilt = Vocabulary.from_counts(dict(zip(legacy.words[4:], legacy.counts[4:])), min_freq=5)
    assert rebuilt.words == legacy.words


def test_pickle_naming_another_class_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(VocabularyError,
                       match=r"evil\.pkl refers to (posix|os|nt)\.system.*refusing"):
        Vocabulary.from_legacy_pickle(path)


def test_pickle_of_an_allowed_class_but_not_a_vocab_is_refused(tmp_path):
    path = tmp_path / "counter.pkl"
    path.write_bytes(pickle.dumps({"itos": ["a"]}))
    with pytest.raises(VocabularyError, match="does not hold a torchtext-style Vocab"):
        Vocabulary.from_legacy_pickle(path)


def test_tokenize_lowercases_and_drops_the_listed_punctuation():
    assert tokenize("A Dog, (brown) runs -- it's fast!...\n") == \
        ["a", "dog", "(", "brown", ")", "runs", "it", "'s", "fast"]


def test_build_applies_min_freq_and_orders_ties_alphabetically():
    captions = ["b a", "b a", "c a", "c d", "d e"]
    vocab = Vocabulary.build(captions, min_freq=2)
    assert vocab.words == ["<unk>", "<pad>", "<bos>", "<eos>", "a", "b", "c", "d"]
    assert vocab.counts == [0, 0, 0, 0, 3, 2, 2, 2]


def test_encode_decode_round_trip_and_truncation(legacy):
    ids = legacy.encode("A man riding a horse.")
    assert ids == [2, 4, 12, legacy.index("riding"), 4, legacy.index("horse"), 3]
    assert legacy.decode(ids) == "a man riding a horse"
    assert legacy.encode("A man riding a horse.", max_len=4) == [2, 4, 12, 3]
    assert legacy.encode("qwertyuiop dog")[1] == legacy.unk_id


def test_decode_stops_at_eos_and_skips_specials(legacy):
    assert legacy.decode([2, 4, 0, 46, 1, 3, 49, 49]) == "a dog"
    with pytest.raises(VocabularyError, match="room for <bos> and <eos>"):
        legacy.encode("a dog", max_len=1)


def test_json_round_trip(legacy, tmp_path):
    path = tmp_path / "vocab.json"
    legacy.save(path)
    loaded = Vocabulary.load(path)
    assert loaded.words == legacy.words and loaded.counts == legacy.counts
    assert Vocabulary.from_dict(legacy.to_dict()).words == legacy.words


def test_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json does not exist.*hin data vocab"):
        Vocabulary.load(tmp_path / "missing.json")
    path = tmp_path / "other.json"
    path.write_text('{"words": ["a"]}')
    with pytest.raises(VocabularyError, match="other.json is not a hin vocabulary"):
        Vocabulary.load(path)
    values = Vocabulary(["<unk>", "<pad>", "<bos>", "<eos>", "a"], [0, 0, 0, 0, 5]).to_dict()
    values["words"] = ["a", "<pad>", "<bos>", "<eos>", "<unk>"]
    with pytest.raises(VocabularyError, match="must start with the specials"):
        Vocabulary.from_dict(values)
