"""Fast CIDEr-D: pycocoevalcap's CIDEr (the CIDEr-D every paper reports), vectorised with NumPy.

Two uses:
- `cider_d(candidates, references)` (corpus mode): document frequencies come from the given
  references, exactly what pycocoevalcap's `Cider().compute_score` does (equal to 1e-6).
- `CiderDTable`: document frequencies computed ONCE from the training references (PTB-
  tokenised once, kept by image id, saved to / loaded from a .npz file). `table.score(
  captions, image_ids)` is the SCST reward: no Java, no tokenisation of generated captions.

The formula is pycocoevalcap's, quirks included: per n-gram order (1..4) the cosine of
tf·idf vectors with the candidate's weights clipped at the reference's, idf = log(number of
documents) − log(max(1, df)), a Gaussian length penalty (σ = 6) whose "length" is the
number of bigrams, averaged over orders and references, times 10.

Inputs are tokenised strings (space-separated words). N-grams are identified by a 64-bit
hash of their word ids (SplitMix64 steps), so scores are exact unless two distinct n-grams
share a hash (odds of order 1e-6 over all of COCO's n-grams). This module never runs Java except to
tokenise raw training references once in `CiderDTable.from_references`.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hin.errors import HINError
from hin.files import atomic_write
from hin.metrics.coco import ptb_tokenize
from hin.metrics.ids import ImageId

MAX_ORDER = 4
SIGMA = 6.0
DOCUMENT_KINDS = ("caption", "image")
TABLE_FORMAT = 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))


class CiderError(HINError, ValueError):
    """Inputs CIDEr-D cannot score, or a table file that cannot be used, with the fix."""


@dataclass(frozen=True)
class _Ngrams:
    """The distinct n-grams of a batch of sentences: one entry per (sentence, n-gram)."""

    sentence: np.ndarray  # int64, which sentence the entry belongs to
    order: np.ndarray     # int64, n - 1
    key: np.ndarray       # uint64, the n-gram's hash
    count: np.ndarray     # float64, its term frequency in the sentence


def _word_ids(sentences: Sequence[str], vocabulary: Mapping[str, int]
              ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(flat word ids, sentence lengths, new words): words outside `vocabulary` get fresh
    ids past its end, in order of first appearance."""
    split = [sentence.split() for sentence in sentences]
    words = list(itertools.chain.from_iterable(split))
    new_words = list(dict.fromkeys(word for word in words if word not in vocabulary))
    fresh = {word: len(vocabulary) + index for index, word in enumerate(new_words)}
    ids = [vocabulary[word] if word in vocabulary else fresh[word] for word in words]
    return (np.array(ids, dtype=np.int64), np.array([len(s) for s in split], dtype=np.int64),
            new_words)


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scatters nearby inputs."""
    values = (values ^ (values >> _SHIFTS[0])) * _MIX1
    values = (values ^ (values >> _SHIFTS[1])) * _MIX2
    return values ^ (values >> _SHIFTS[2])


def _pair_keys(keys: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """One uint64 per (owner, n-gram key) pair; n-gram keys are already well scattered."""
    return keys + owners.astype(np.uint64) * _GOLDEN


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort `values`: (the sorting permutation, where each run of equal values starts, run
    lengths)."""
    permutation = np.argsort(values)
    ordered = values[permutation]
    run_starts = np.empty(len(values), dtype=bool)
    run_starts[:1] = True
    run_starts[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(run_starts)
    return permutation, starts, np.diff(np.append(starts, len(values)))


def _ngrams(word_ids: np.ndarray, lengths: np.ndarray) -> _Ngrams:
    """Distinct 1..4-grams of each sentence with their counts, all sentences at once."""
    num_words = len(word_ids)
    sentence_of_word = np.repeat(np.arange(len(lengths)), lengths)
    words_left = np.cumsum(lengths)[sentence_of_word] - np.arange(num_words)
    tokens = (word_ids + 1).astype(np.uint64)
    key = np.zeros(num_words, dtype=np.uint64)
    sentences, orders, keys = [], [], []
    for n in range(1, MAX_ORDER + 1):
        span = max(num_words - n + 1, 0)
        key[:span] = _mix(key[:span] + tokens[n - 1:n - 1 + span])  # now words i .. i+n-1
        starts = np.flatnonzero(words_left >= n)
        sentences.append(sentence_of_word[starts])
        orders.append(np.full(len(starts), n - 1))
        keys.append(key[starts])
    sentence, order, key = map(np.concatenate, (sentences, orders, keys))
    permutation, starts, counts = _runs(_pair_keys(key, sentence))
    first = permutation[starts]
    return _Ngrams(sentence[first], order[first], key[first], counts.astype(np.float64))


def _document_frequency(ngrams: _Ngrams, document_of_sentence: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(sorted n-gram keys, number of documents containing each)."""
    document = document_of_sentence[ngrams.sentence]
    permutation, starts, _ = _runs(_pair_keys(ngrams.key, document))
    keys, counts = np.unique(ngrams.key[permutation[starts]], return_counts=True)
    return keys, counts


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[keys == query] for each query (keys sorted), 0 where absent.

    Queries are searched in sorted order: several times faster than in random order.
    """
    if len(keys) == 0:
        return np.zeros(len(queries))
    order = np.argsort(queries)
    ordered = queries[order]
    position = np.minimum(np.searchsorted(keys, ordered), len(keys) - 1)
    found = np.empty(len(queries))
    found[order] = np.where(keys[position] == ordered, values[position], 0)
    return found


def _cider_d(candidates: tuple[np.ndarray, np.ndarray], candidate_group: np.ndarray,
             references: tuple[np.ndarray, np.ndarray], reference_counts: np.ndarray,
             document_frequency: tuple[np.ndarray, np.ndarray] | None,
             log_documents: float) -> np.ndarray:
    """CIDEr-D of each candidate sentence against the references of its group.

    `references` are (word ids, lengths) grouped contiguously: group g owns the next
    `reference_counts[g]` sentences. `document_frequency` is (sorted n-gram keys, number of
    documents holding each); None means corpus mode: df over the groups' references, as
    pycocoevalcap does.
    """
    cand, refs = _ngrams(*candidates), _ngrams(*references)
    num_cands, num_groups = len(candidate_group), len(reference_counts)
    group_of_ref = np.repeat(np.arange(num_groups), reference_counts)
    df_keys, df_counts = document_frequency or _document_frequency(refs, group_of_ref)
    frequency = _lookup(df_keys, df_counts, np.concatenate((cand.key, refs.key)))
    weight = np.concatenate((cand.count, refs.count)) * (
        log_documents - np.log(np.maximum(1.0, frequency)))
    weight_cand, weight_ref = weight[:len(cand.key)], weight[len(cand.key):]

    # Join candidate n-grams with the same n-gram in each reference of the candidate's group
    # (both sides sorted by the (group, n-gram) key, so the searches run in order).
    ref_join = _pair_keys(refs.key, group_of_ref[refs.sentence])
    by_ref_join = np.argsort(ref_join)
    ref_join = ref_join[by_ref_join]
    cand_join = _pair_keys(cand.key, candidate_group[cand.sentence])
    by_cand_join = np.argsort(cand_join)
    cand_join = cand_join[by_cand_join]
    low = np.searchsorted(ref_join, cand_join, side="left")
    matches = np.searchsorted(ref_join, cand_join, side="right") - low
    cand_entry = by_cand_join[np.repeat(np.arange(len(cand_join)), matches)]
    ref_entry = by_ref_join[_ranges(low, matches)]

    first_ref = np.cumsum(reference_counts) - reference_counts
    slot_of_ref = np.arange(len(group_of_ref)) - first_ref[group_of_ref]
    max_refs = int(reference_counts.max())
    overlap = np.bincount(
        (cand.sentence[cand_entry] * max_refs + slot_of_ref[refs.sentence[ref_entry]]) * MAX_ORDER
        + cand.order[cand_entry],
        weights=np.minimum(weight_cand[cand_entry], weight_ref[ref_entry]) * weight_ref[ref_entry],
        minlength=num_cands * max_refs * MAX_ORDER).reshape(num_cands, max_refs, MAX_ORDER)

    norm_cand = _norms(cand, weight_cand, num_cands)
    norm_ref = _norms(refs, weight_ref, len(group_of_ref))
    slots = np.arange(max_refs)
    valid = slots < reference_counts[candidate_group][:, None]                 # [C, R]
    ref_of_slot = np.where(valid, first_ref[candidate_group][:, None] + slots, 0)
    denominator = norm_cand[:, None, :] * norm_ref[ref_of_slot]                # [C, R, 4]
    # A zero norm means all-zero weights on that side, hence a zero overlap: 0, not NaN.
    cosine = np.divide(overlap, denominator, out=np.zeros_like(denominator),
                       where=denominator != 0)
    bigrams_cand = np.maximum(candidates[1] - 1, 0)
    bigrams_ref = np.maximum(references[1] - 1, 0)
    delta = (bigrams_cand[:, None] - bigrams_ref[ref_of_slot]).astype(np.float64)
    penalty = np.exp(-(delta ** 2) / (2 * SIGMA ** 2)) * valid
    per_ref = (cosine * penalty[:, :, None]).sum(axis=1)                         # [C, 4]
    return per_ref.mean(axis=1) / reference_counts[candidate_group] * 10.0


def _norms(ngrams: _Ngrams, weight: np.ndarray, num_sentences: int) -> np.ndarray:
    """Per sentence and order, the Euclidean norm of the tf·idf vector: [S, 4]."""
    squares = np.bincount(ngrams.sentence * MAX_ORDER + ngrams.order, weights=weight ** 2,
                          minlength=num_sentences * MAX_ORDER)
    return np.sqrt(squares).reshape(num_sentences, MAX_ORDER)


def cider_d(candidates: Mapping[ImageId, str], references: Mapping[ImageId, Sequence[str]],
            df: CiderDTable | None = None) -> tuple[float, dict[ImageId, float]]:
    """CIDEr-D of tokenised `candidates` {id: caption} against `references` {id: [captions]}.

    df=None: document frequencies of these references (equals pycocoevalcap's Cider).
    df=a CiderDTable: the training corpus's frequencies (the SCST reward's definition).
    Returns (mean, {id: score}).
    """
    ids = list(candidates)
    if not ids:
        raise CiderError("cider_d needs at least one candidate caption")
    if set(references) != set(ids):
        strays = sorted(map(repr, set(references) ^ set(ids)))
        raise CiderError(f"candidates and references must have the same ids; {len(strays)} "
                         f"id(s) are in only one of them, e.g. {strays[0]}")
    reference_lists = [references[i] for i in ids]
    for i, refs in zip(ids, reference_lists):
        if isinstance(refs, str) or not refs:
            raise CiderError(f"references of id {i!r} must be a non-empty list of captions")
    word_ids, lengths, _ = _word_ids(
        [candidates[i] for i in ids] + list(itertools.chain.from_iterable(reference_lists)),
        df.vocabulary if df is not None else {})
    split = lengths[:len(ids)].sum()
    scores = _cider_d(
        (word_ids[:split], lengths[:len(ids)]), np.arange(len(ids)),
        (word_ids[split:], lengths[len(ids):]), np.array([len(refs) for refs in reference_lists]),
        (df.ngram_keys, df.ngram_documents) if df is not None else None,
        df.log_documents if df is not None else float(np.log(len(ids))))
    return float(scores.mean()), dict(zip(ids, scores.tolist()))


class CiderDTable:
    """Document frequencies of a training corpus plus its tokenised references by image id.

    `documents` says what one document is: "caption" (each reference caption; what the
    reference implementation's SCST does) or "image" (all captions of one image; the
    CIDEr paper's and pycocoevalcap's definition).
    """

    def __init__(self, words: Sequence[str], word_ids: np.ndarray, caption_lengths: np.ndarray,
                 image_ids: Sequence[Hashable], captions_per_image: np.ndarray,
                 documents: str, ngram_keys: np.ndarray | None = None,
                 ngram_documents: np.ndarray | None = None) -> None:
        if documents not in DOCUMENT_KINDS:
            raise CiderError(f"documents must be one of {DOCUMENT_KINDS}, got {documents!r}")
        self.words = list(words)
        self.vocabulary = {word: index for index, word in enumerate(self.words)}
        self.word_ids = np.asarray(word_ids, dtype=np.int64)
        self.caption_lengths = np.asarray(caption_lengths, dtype=np.int64)
        self.image_ids = list(image_ids)
        self.captions_per_image = np.asarray(captions_per_image, dtype=np.int64)
        self.documents = documents
        self._row = {image_id: row for row, image_id in enumerate(self.image_ids)}
        self._first_caption = np.cumsum(self.captions_per_image) - self.captions_per_image
        self._first_word = np.cumsum(self.caption_lengths) - self.caption_lengths
        num_documents = (len(self.caption_lengths) if documents == "caption"
                         else len(self.image_ids))
        self.log_documents = float(np.log(num_documents))
        if ngram_keys is None or ngram_documents is None:
            document_of_caption = (np.arange(len(self.caption_lengths)) if documents == "caption"
                                   else np.repeat(np.arange(len(self.image_ids)),
                                                  self.captions_per_image))
            ngram_keys, ngram_documents = _document_frequency(
                _ngrams(self.word_ids, self.caption_lengths), document_of_caption)
        self.ngram_keys = np.asarray(ngram_keys, dtype=np.uint64)
        self.ngram_documents = np.asarray(ngram_documents, dtype=np.int64)

    @classmethod
    def from_references(cls, references: Mapping[Any, Sequence[str]], *,
                        documents: str = "caption", tokenized: bool = False,
                        java: str | None = None) -> CiderDTable:
        """Build from {image_id: [captions]}; raw captions are PTB-tokenised once, here."""
        image_ids = list(references)
        captions = [caption for i in image_ids for caption in references[i]]
        if not captions:
            raise CiderError("CiderDTable.from_references needs at least one reference caption")
        if not tokenized:
            captions = ptb_tokenize(captions, java)
        word_ids, lengths, words = _word_ids(captions, {})
        return cls(words, word_ids, lengths, image_ids,
                   np.array([len(references[i]) for i in image_ids]), documents)

    def __contains__(self, image_id: Hashable) -> bool:
        return image_id in self._row

    def __len__(self) -> int:
        return len(self.image_ids)

    def references(self, image_id: Hashable) -> list[str]:
        """The tokenised reference captions of one training image."""
        row = self._rows([image_id])[0]
        first = self._first_caption[row]
        captions = range(first, first + self.captions_per_image[row])
        return [" ".join(self.words[w] for w in self.word_ids[self._first_word[c]:][
            :self.caption_lengths[c]]) for c in captions]

    def score(self, captions: Sequence[str], image_ids: Sequence[Hashable]) -> np.ndarray:
        """CIDEr-D of each tokenised caption against its image's training references.

        Several captions may share an image (SCST: the beams of one image). float64 [N].
        """
        if len(captions) != len(image_ids):
            raise CiderError(f"{len(captions)} captions but {len(image_ids)} image ids")
        groups, candidate_group = np.unique(self._rows(image_ids), return_inverse=True)
        counts = self.captions_per_image[groups]
        caption_index = _ranges(self._first_caption[groups], counts)
        lengths = self.caption_lengths[caption_index]
        words = self.word_ids[_ranges(self._first_word[caption_index], lengths)]
        return _cider_d(_word_ids(captions, self.vocabulary)[:2], candidate_group.reshape(-1),
                        (words, lengths), counts, (self.ngram_keys, self.ngram_documents),
                        self.log_documents)

    def _rows(self, image_ids: Sequence[Hashable]) -> np.ndarray:
        try:
            return np.array([self._row[i] for i in image_ids], dtype=np.int64)
        except KeyError as error:
            raise CiderError(f"image id {error.args[0]!r} has no references in this CIDEr-D "
                             "table; build the table from the split you train on") from None

    def save(self, path: str | Path) -> None:
        """Write the table to `path` (.npz, no pickles)."""
        with atomic_write(path, "wb") as file:
            np.savez(file, format=np.array(TABLE_FORMAT), words=np.array(self.words, dtype=str),
                     word_ids=self.word_ids.astype(np.int32),
                     caption_lengths=self.caption_lengths.astype(np.int32),
                     image_ids=np.array(self.image_ids),
                     captions_per_image=self.captions_per_image.astype(np.int32),
                     documents=np.array(self.documents), ngram_keys=self.ngram_keys,
                     ngram_documents=self.ngram_documents.astype(np.int32))

    @classmethod
    def load(cls, path: str | Path) -> CiderDTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CIDEr-D table {path} does not exist; build it with "
                                    "CiderDTable.from_references(...).save(path)")
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data or int(data["format"]) != TABLE_FORMAT:
                raise CiderError(f"{path} is not a CIDEr-D table of format {TABLE_FORMAT}; "
                                 "rebuild it with CiderDTable.from_references(...).save(path)")
            return cls(data["words"].tolist(), data["word_ids"], data["caption_lengths"],
                       data["image_ids"].tolist(), data["captions_per_image"],
                       str(data["documents"]), data["ngram_keys"], data["ngram_documents"])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + length) for each pair, without a Python loop."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())
