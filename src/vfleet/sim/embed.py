"""Deterministic embeddings and relevance scores for the simulator's pooling models.

A text's embedding is the normalised sum of one pseudo-random vector per lower-cased word (seeded
by the word's hash), so equal texts embed equally in every process, and texts that share words
have a higher cosine similarity, which makes rerank and score results meaningful in tests.
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from functools import lru_cache

_WORD = re.compile(r"\w+|[^\w\s]")


@lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int) -> tuple[float, ...]:
    raw = array("h", hashlib.shake_256(word.encode()).digest(2 * dim))
    return tuple(v / 32768.0 for v in raw)


def embed(text: str, dim: int) -> list[float]:
    """Unit vector of `dim` floats for `text`."""
    acc = [0.0] * dim
    words = _WORD.findall(text.lower()) or [""]
    for w in words:
        acc = [a + b for a, b in zip(acc, _word_vector(w, dim), strict=True)]
    norm = math.sqrt(sum(a * a for a in acc)) or 1.0
    return [a / norm for a in acc]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def relevance(query: str, document: str, dim: int) -> float:
    """A score in [0, 1], higher when the texts share words."""
    return (cosine(embed(query, dim), embed(document, dim)) + 1.0) / 2.0
