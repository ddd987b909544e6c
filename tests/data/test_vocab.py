"""Vocabulary: the tokenisation rule, ordering, encode/decode, JSON and the safe legacy import."""

import pickle

import pytest

from helpers.paths import FIXTURES
from hin.data.vocab import Vocabulary, VocabularyError, tokenize, vocabulary_for

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


def test_a_checkpoints_recorded_vocabulary_is_the_one_used(tmp_path):
    vocab = Vocabulary.from_counts({"red": 3, "green": 2, "ball": 1}, min_freq=1)
    same = tmp_path / "same.json"
    vocab.save(same)
    recorded = {"vocabulary": vocab.to_dict()}
    for given in (None, same):
        used = vocabulary_for("model.pt", recorded, given, size=7)
        assert used.words == vocab.words and used.source == "recorded in model.pt"
    used = vocabulary_for("imported.pt", {}, same, size=7)      # no record: the file is used
    assert used.words == vocab.words and used.source == str(same)
    assert used.digest() == vocab.digest() != Vocabulary(vocab.words[:-1], [0] * 6).digest()


def test_a_vocab_file_that_differs_from_the_recorded_one_is_refused(tmp_path):
    vocab = Vocabulary.from_counts({"red": 3, "green": 2, "ball": 1}, min_freq=1)
    swapped = tmp_path / "swapped.json"
    words = list(vocab.words)
    words[4], words[5] = words[5], words[4]
    Vocabulary(words, vocab.counts).save(swapped)
    with pytest.raises(VocabularyError) as error:
        vocabulary_for("model.pt", {"vocabulary": vocab.to_dict()}, swapped, size=7)
    assert str(error.value) == (
        f"the vocabulary {swapped} differs from the one recorded in model.pt at entry 4: 'green' "
        "instead of 'red'; the recorded vocabulary is used by default: leave out --vocab")
    longer = tmp_path / "longer.json"
    Vocabulary([*vocab.words, "cube"], [*vocab.counts, 1]).save(longer)
    with pytest.raises(VocabularyError, match="at entry 7: 'cube' instead of nothing"):
        vocabulary_for("model.pt", {"vocabulary": vocab.to_dict()}, longer, size=7)


def test_without_a_recorded_vocabulary_a_file_of_the_right_size_is_needed(tmp_path):
    vocab = Vocabulary.from_counts({"red": 3, "green": 2, "ball": 1}, min_freq=1)
    vocab.save(tmp_path / "v.json")
    with pytest.raises(VocabularyError, match=r"imported\.pt carries no vocabulary; pass the one "
                                              r"it was trained with \(--vocab"):
        vocabulary_for("imported.pt", {}, None, size=7)
    with pytest.raises(VocabularyError, match=r"has 7 entries but imported\.pt was trained with 9"):
        vocabulary_for("imported.pt", {}, tmp_path / "v.json", size=9)
