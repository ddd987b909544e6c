"""Caption post-processing applied before scoring (docs/model.md §7).

Captions arrive already cut at `<eos>` (the vocabulary's decode does that). The reference
evaluation additionally collapses immediately repeated words ("a a dog" -> "a dog"); we do
the same by default so numbers are comparable, and every report states whether it was on.
This module only rewrites strings: it never tokenises (PTB tokenisation belongs to scoring).
"""

from __future__ import annotations

from itertools import groupby


def collapse_repeats(caption: str) -> str:
    """Drop each word that equals the word before it: "a a dog dog ." -> "a dog ."."""
    return " ".join(word for word, _ in groupby(caption.split()))
