"""Caption vocabulary: the tokenisation rule, word ids, JSON storage and the legacy-pickle import.

The rule (docs/model.md §6) is the reference's, so that the standard 10,201-entry COCO vocabulary comes
out: lower-case, spaCy's rule-based English tokenizer, punctuation tokens dropped, words kept
at frequency >= `min_freq`, specials first, then descending frequency with ties alphabetical.
The same `tokenize` makes the training targets.

This module must never execute pickled code: the legacy import goes through an unpickler
that resolves only the few classes the reference's vocabulary file names.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import pickle
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hin.errors import HINError
from hin.files import read_json, require_file, write_json

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<bos>", "<eos>"
SPECIALS = (UNK, PAD, BOS, EOS)
PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";"])
JSON_FORMAT = "hin-vocabulary"
JSON_VERSION = 1


class VocabularyError(HINError, ValueError):
    """A vocabulary file or value that cannot be used, with what would be accepted."""


@functools.lru_cache(maxsize=1)
def _spacy_tokenizer() -> Any:
    """spaCy's rule-based English tokenizer, built once per process (no model download)."""
    from spacy.lang.en import English

    return English().tokenizer


def tokenize(caption: str) -> list[str]:
    """Caption -> word tokens by the reference's rule (lower-case, spaCy, punctuation dropped)."""
    text = caption.lower().rstrip("\n")
    return [token.text for token in _spacy_tokenizer()(text) if token.text not in PUNCTUATION]


def _ordered_words(counts: Mapping[str, int], min_freq: int) -> list[str]:
    kept = [(word, count) for word, count in counts.items()
            if count >= min_freq and word not in SPECIALS]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return [word for word, _ in kept]


class Vocabulary:
    """Word <-> id mapping; the specials `<unk>`, `<pad>`, `<bos>`, `<eos>` are ids 0..3."""

    unk_id = SPECIALS.index(UNK)
    pad_id = SPECIALS.index(PAD)
    bos_id = SPECIALS.index(BOS)
    eos_id = SPECIALS.index(EOS)

    def __init__(self, words: Sequence[str], counts: Sequence[int]) -> None:
        """`words` starts with the specials; `counts[i]` is the corpus frequency of `words[i]`."""
        words = list(words)
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise VocabularyError(
                f"a vocabulary must start with the specials {list(SPECIALS)}, got {words[:4]}")
        if len(counts) != len(words):
            raise VocabularyError(
                f"a vocabulary needs one count per word: {len(words)} words, {len(counts)} counts")
        bad = next((word for word in words if not isinstance(word, str) or not word), None)
        if bad is not None:
            raise VocabularyError(f"a vocabulary's words are non-empty text; {bad!r} at entry "
                                  f"{words.index(bad)} is not")
        if not all(isinstance(count, int) and not isinstance(count, bool) and count >= 0
                   for count in counts):
            raise VocabularyError("a vocabulary's counts are whole numbers >= 0")
        if len(set(words)) != len(words):
            repeated = [word for word, n in collections.Counter(words).items() if n > 1]
            raise VocabularyError(f"a vocabulary lists words more than once: {repeated[:5]}")
        self.words = words
        self.counts = [int(count) for count in counts]
        self._ids = {word: index for index, word in enumerate(words)}
        self.source = "built in memory"     # where it was read from, for reports

    @classmethod
    def build(cls, captions: Iterable[str], min_freq: int = 5,
              progress: bool = False) -> Vocabulary:
        """Count the tokens of `captions` and keep words seen at least `min_freq` times."""
        counts: collections.Counter[str] = collections.Counter()
        for caption in tqdm(captions, desc="tokenising captions", unit="caption",
                            disable=not progress):
            counts.update(tokenize(caption))
        return cls.from_counts(counts, min_freq)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_freq: int) -> Vocabulary:
        words = _ordered_words(counts, min_freq)
        if not words:
            most = max((count for word, count in counts.items() if word not in SPECIALS),
                       default=0)
            raise VocabularyError(f"no word occurs {min_freq} times (the most frequent occurs "
                                  f"{most} times), so the vocabulary would hold only the "
                                  "specials: lower the minimum frequency (--min-freq)")
        return cls([*SPECIALS, *words], [0] * len(SPECIALS) + [counts[word] for word in words])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def unreachable(self) -> list[str]:
        """Words the tokenizer never produces (`Magenta`, `dark red`: hand-edited entries):
        no caption encodes to them, so the model can only learn never to say them."""
        return [word for word in self.words[len(SPECIALS):] if tokenize(word) != [word]]

    def index(self, word: str) -> int:
        """Id of `word`, or `<unk>`'s id for a word outside the vocabulary."""
        return self._ids.get(word, self.unk_id)

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """Caption -> `[<bos>, w1, ..., <eos>]`; at most `max_len` ids, `<eos>` always kept."""
        ids = [self.bos_id, *(self.index(word) for word in tokenize(caption)), self.eos_id]
        return ids if max_len is None else self.shorten(ids, max_len)

    def shorten(self, ids: list[int], max_len: int) -> list[int]:
        """Encoded ids cut to at most `max_len`, `<eos>` kept: the one rule for long captions."""
        if max_len < 2:
            raise VocabularyError(f"max_len must leave room for <bos> and <eos>, got {max_len}")
        return ids if len(ids) <= max_len else ids[:max_len - 1] + [self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> caption text: stops at `<eos>` and skips the other specials."""
        special_ids = {self.unk_id, self.pad_id, self.bos_id}
        words = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == self.eos_id:
                break
            if token_id not in special_ids:
                words.append(self.words[token_id])
        return " ".join(words)

    def digest(self) -> str:
        """sha256 of the word list in id order: equal digests decode ids to equal words."""
        return hashlib.sha256(json.dumps(self.words, ensure_ascii=False).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored inside checkpoints and vocabulary files."""
        return {"format": JSON_FORMAT, "version": JSON_VERSION,
                "words": list(self.words), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "vocabulary") -> Vocabulary:
        if not isinstance(values, Mapping):
            raise VocabularyError(
                f"{source} holds a JSON {type(values).__name__}, not a hin vocabulary (an "
                "object with format, version, words and counts): build one with `hin data vocab`")
        if values.get("format") != JSON_FORMAT or values.get("version") != JSON_VERSION:
            raise VocabularyError(
                f"{source} is not a hin vocabulary (format {values.get('format')!r}, version "
                f"{values.get('version')!r}; expected {JSON_FORMAT!r} version {JSON_VERSION}); "
                f"a reference .pkl vocabulary is imported with Vocabulary.from_legacy_pickle")
        lists = [key for key in ("words", "counts") if not isinstance(values.get(key), list)]
        if lists:
            raise VocabularyError(f"{source} has no {' or '.join(repr(key) for key in lists)} "
                                  "list: a hin vocabulary lists its words and their counts; "
                                  "build one with `hin data vocab`")
        try:
            vocab = cls(values["words"], values["counts"])
        except VocabularyError as error:
            raise VocabularyError(f"{source}: {error}") from error
        vocab.source = source
        return vocab

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), indent=0)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        values = read_json(path, "vocabulary file",
                           "build one with `hin data vocab` or import the reference's pickle with "
                           "`hin data vocab --legacy FILE.pkl`", error=VocabularyError)
        return cls.from_dict(values, source=str(path))

    @classmethod
    def read(cls, path: str | Path) -> Vocabulary:
        """A vocabulary file of either kind, told apart by content: hin's JSON, or the
        reference's pickle (which starts with pickle's protocol byte)."""
        path = Path(path)
        is_pickle = False
        if path.is_file():
            with path.open("rb") as handle:
                is_pickle = handle.read(1) == b"\x80"
        return cls.from_legacy_pickle(path) if is_pickle else cls.load(path)

    @classmethod
    def from_legacy_pickle(cls, path: str | Path) -> Vocabulary:
        """Import the torchtext-style `Vocab` pickle of the reference and M2, safely."""
        path = require_file(path, "legacy vocabulary pickle")
        with path.open("rb") as handle:
            try:
                legacy = _LegacyUnpickler(handle, path).load()
            except VocabularyError:
                raise
            except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
                    IndexError) as error:
                raise VocabularyError(
                    f"{path} is not a readable vocabulary pickle: it is truncated or corrupted "
                    f"({type(error).__name__}: {error}); copy the reference's vocab .pkl again"
                    ) from error
        if not isinstance(legacy, _LegacyVocab) or not hasattr(legacy, "itos"):
            raise VocabularyError(f"{path} does not hold a torchtext-style Vocab (no 'itos' list)")
        freqs = getattr(legacy, "freqs", {})
        vocab = cls(legacy.itos, [0 if word in SPECIALS else freqs.get(word, 0)
                                  for word in legacy.itos])
        vocab.source = str(path)
        return vocab


def vocabulary_for(checkpoint: str | Path, extra: Mapping[str, Any], given: str | Path | None,
                   size: int) -> Vocabulary:
    """The vocabulary that decodes `checkpoint`'s outputs, by one rule for every command: the
    vocabulary the checkpoint records (`extra["vocabulary"]`, written by `hin train`) is used;
    a `given` file is for checkpoints without one (imported reference checkpoints), and one
    that differs from the recorded vocabulary is refused, naming the first differing entry."""
    recorded = extra.get("vocabulary")
    if recorded is not None:
        vocab = Vocabulary.from_dict(recorded, source=f"recorded in {checkpoint}")
        if given is not None:
            require_same_words(vocab, Vocabulary.read(given), "the recorded vocabulary is used "
                               "by default: leave out --vocab")
    elif given is None:
        raise VocabularyError(f"{checkpoint} carries no vocabulary; pass the one it was trained "
                              "with (--vocab vocab.json or the reference's vocab.pkl, or "
                              "vocab=...), or embed it with `hin import-checkpoint ... --vocab`")
    else:
        vocab = Vocabulary.read(given)
    if len(vocab) != size:
        raise VocabularyError(f"the vocabulary {vocab.source} has {len(vocab)} entries but "
                              f"{checkpoint} was trained with {size}; give the vocabulary it "
                              "was trained with")
    return vocab


def require_same_words(expected: Vocabulary, other: Vocabulary, fix: str) -> None:
    """Refuse `other` unless it maps every id to the same word as `expected`; `fix` says
    what to do instead."""
    if other.words == expected.words:
        return
    index = next((i for i, (a, b) in enumerate(zip(expected.words, other.words)) if a != b),
                 min(len(expected), len(other)))

    def entry(vocab: Vocabulary) -> str:
        return repr(vocab.words[index]) if index < len(vocab) else "nothing (it ends there)"
    raise VocabularyError(
        f"the vocabulary {other.source} differs from the one {expected.source} at entry "
        f"{index}: {entry(other)} instead of {entry(expected)}; {fix}")


class _LegacyVocab:
    """Inert stand-in for the reference's `Vocab`: pickle restores its attributes, nothing runs."""


def _default_unk_index() -> int:
    return Vocabulary.unk_id


class _LegacyUnpickler(pickle.Unpickler):
    """Resolves exactly the classes a reference vocabulary pickle names; refuses all others."""

    ALLOWED = {
        ("common.data.vocab", "Vocab"): _LegacyVocab,
        ("common.data.vocab", "_default_unk_index"): _default_unk_index,
        ("collections", "Counter"): collections.Counter,
        ("collections", "defaultdict"): collections.defaultdict,
    }

    def __init__(self, handle: Any, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            allowed = sorted(f"{m}.{n}" for m, n in self.ALLOWED)
            raise VocabularyError(
                f"{self.path} refers to {module}.{name}, which a vocabulary pickle has no need "
                f"for; refusing to load it (allowed: {', '.join(allowed)})") from None
