"""Fast CIDEr-D: equality with pycocoevalcap, the training-df table, its file, its errors."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from helpers.metrics_data import built_references, fixture_captions
from hin.metrics import CiderDTable, CiderError, cider_d


def _direct_cider_d(candidate: str, references: list[str], df: Counter, num_documents: int
                    ) -> float:
    """CIDEr-D written out from its definition, one caption at a time (the test oracle)."""
    def vectors(sentence: str):
        words = sentence.split()
        grams = [Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
                 for n in range(1, 5)]
        weights = [{g: tf * (math.log(num_documents) - math.log(max(1.0, df[g])))
                    for g, tf in counts.items()} for counts in grams]
        return weights, [math.sqrt(sum(w * w for w in v.values())) for v in weights], \
            max(len(words) - 1, 0)

    cand, cand_norm, cand_len = vectors(candidate)
    total = 0.0
    for reference in references:
        ref, ref_norm, ref_len = vectors(reference)
        penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * 6.0 ** 2))
        for n in range(4):
            overlap = sum(min(w, ref[n].get(g, 0.0)) * ref[n].get(g, 0.0)
                          for g, w in cand[n].items())
            if cand_norm[n] and ref_norm[n]:
                overlap /= cand_norm[n] * ref_norm[n]
            total += overlap * penalty / 4
    return total / len(references) * 10


def _document_counts(documents: list[list[str]]) -> Counter:
    df: Counter = Counter()
    for sentences in documents:
        df.update({tuple(s.split()[i:i + n]) for s in sentences for n in range(1, 5)
                   for i in range(len(s.split()) - n + 1)})
    return df


def test_corpus_mode_equals_pycocoevalcap_on_the_real_captions():
    captions = fixture_captions()
    references = built_references(captions)
    mean, per_id = cider_d(captions, references)
    expected_mean, expected = Cider().compute_score(
        references, {i: [captions[i]] for i in references})
    assert mean == pytest.approx(expected_mean, abs=1e-6)
    assert np.allclose([per_id[i] for i in references], expected, rtol=0, atol=1e-6)
    assert 0.5 < mean < 3.0  # a real spread of scores, not a degenerate case


def test_hand_checked_value():
    # "a" is in both documents (idf 0); "dog" and "a dog" are in one (idf log 2): the
    # candidate equals its reference, so the 1- and 2-gram cosines are 1 and the 3-, 4-gram
    # ones 0 (no such n-grams): CIDEr-D = 10 * mean(1, 1, 0, 0) = 5.
    mean, per_id = cider_d({1: "a dog", 2: "a cat"}, {1: ["a dog"], 2: ["a cat"]})
    assert per_id == pytest.approx({1: 5.0, 2: 5.0})
    assert mean == pytest.approx(5.0)


def test_length_penalty_and_clipping_match_pycocoevalcap():
    candidates = {1: "a dog a dog a dog", 2: "", 3: "dog", 4: "a cat on a mat with a hat"}
    references = {1: ["a dog", "a big dog runs"], 2: ["a cat"], 3: ["dog dog"],
                  4: ["a cat on a mat", "the hat", "a cat with a hat on a mat"]}
    _, per_id = cider_d(candidates, references)
    _, expected = Cider().compute_score(references, {i: [c] for i, c in candidates.items()})
    assert np.allclose([per_id[i] for i in candidates], expected, atol=1e-9)


def test_empty_captions_score_zero():
    assert cider_d({1: "", 2: ""}, {1: [""], 2: ["", ""]}) == (0.0, {1: 0.0, 2: 0.0})


@pytest.mark.parametrize("documents", ["caption", "image"])
def test_table_scores_equal_a_direct_computation(documents):
    captions = fixture_captions()
    training = built_references(captions)
    table = CiderDTable.from_references(training, documents=documents, tokenized=True)
    groups = list(training.values())
    docs = [[s] for g in groups for s in g] if documents == "caption" else groups
    df, num_documents = _document_counts(docs), len(docs)
    image_ids = sorted(training)[:20]
    beams = [captions[i] for i in image_ids] + ["a zebra never seen in training", "dog dog"]
    beam_images = image_ids + image_ids[:2]
    rewards = table.score(beams, beam_images)
    expected = [_direct_cider_d(b, training[i], df, num_documents)
                for b, i in zip(beams, beam_images)]
    assert np.allclose(rewards, expected, rtol=0, atol=1e-9)


def test_image_documents_table_on_its_own_images_equals_corpus_mode():
    captions = fixture_captions()
    references = built_references(captions)
    table = CiderDTable.from_references(references, documents="image", tokenized=True)
    corpus_mean, _ = cider_d(captions, references)
    table_mean, _ = cider_d(captions, references, df=table)
    ids = list(references)
    assert table_mean == pytest.approx(corpus_mean, abs=1e-9)
    assert table.score([captions[i] for i in ids], ids).mean() == pytest.approx(corpus_mean)


def test_table_file_round_trip(tmp_path):
    references = {7: ["a dog on a couch", "a brown dog"], 9: ["two cats", "cats on a bed"]}
    table = CiderDTable.from_references(references, tokenized=True)
    table.save(tmp_path / "cider.npz")
    loaded = CiderDTable.load(tmp_path / "cider.npz")
    assert loaded.references(9) == ["two cats", "cats on a bed"]
    assert loaded.documents == "caption" and len(loaded) == 2 and 7 in loaded
    captions = ["a dog", "cats", "a dog on a bed"]
    assert np.array_equal(loaded.score(captions, [7, 9, 7]), table.score(captions, [7, 9, 7]))


def test_table_tokenises_raw_references_once_with_ptb():
    table = CiderDTable.from_references({1: ["A Dog, on the couch.", "Two DOGS!"]})
    assert table.references(1) == ["a dog on the couch", "two dogs"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CiderError, match="same ids; 1 id"):
        cider_d({1: "a dog"}, {1: ["a dog"], 2: ["a cat"]})
    with pytest.raises(CiderError, match="references of id 1 must be a non-empty list"):
        cider_d({1: "a dog"}, {1: []})
    table = CiderDTable.from_references({1: ["a dog"]}, tokenized=True)
    with pytest.raises(CiderError, match="image id 5 has no references"):
        table.score(["a dog"], [5])
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        CiderDTable.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CiderError, match="not a CIDEr-D table"):
        CiderDTable.load(tmp_path / "other.npz")
