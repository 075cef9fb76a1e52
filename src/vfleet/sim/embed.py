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

DEFAULT_DIM = 384  # for models not in the table below
# Output sizes of well-known embedding models (their config's hidden size or pooling output),
# so a simulated engine returns vectors as long as the real model's.
KNOWN_DIMS = {
    "qwen/qwen3-embedding-0.6b": 1024,
    "qwen/qwen3-embedding-4b": 2560,
    "qwen/qwen3-embedding-8b": 4096,
    "baai/bge-m3": 1024,
    "baai/bge-large-en-v1.5": 1024,
    "baai/bge-base-en-v1.5": 768,
    "baai/bge-small-en-v1.5": 384,
    "intfloat/e5-mistral-7b-instruct": 4096,
    "intfloat/multilingual-e5-large": 1024,
    "intfloat/multilingual-e5-large-instruct": 1024,
    "intfloat/e5-large-v2": 1024,
    "intfloat/e5-base-v2": 768,
    "intfloat/e5-small-v2": 384,
    "sentence-transformers/all-minilm-l6-v2": 384,
    "sentence-transformers/all-mpnet-base-v2": 768,
    "nomic-ai/nomic-embed-text-v1": 768,
    "nomic-ai/nomic-embed-text-v1.5": 768,
    "alibaba-nlp/gte-qwen2-7b-instruct": 3584,
    "alibaba-nlp/gte-qwen2-1.5b-instruct": 1536,
    "alibaba-nlp/gte-large-en-v1.5": 1024,
    "alibaba-nlp/gte-base-en-v1.5": 768,
    "jinaai/jina-embeddings-v3": 1024,
    "jinaai/jina-embeddings-v2-base-en": 768,
    "snowflake/snowflake-arctic-embed-l": 1024,
    "snowflake/snowflake-arctic-embed-m": 768,
    "snowflake/snowflake-arctic-embed-l-v2.0": 1024,
    "snowflake/snowflake-arctic-embed-m-v2.0": 768,
    "mixedbread-ai/mxbai-embed-large-v1": 1024,
    "google/embeddinggemma-300m": 768,
}
_BY_BASENAME = {name.rsplit("/", 1)[1]: dim for name, dim in KNOWN_DIMS.items()}


def dim_for(model: str) -> int:
    """The embedding size of `model` (a repo id, or a local path ending in the repo's name)."""
    key = model.strip().rstrip("/").lower()
    if key in KNOWN_DIMS:
        return KNOWN_DIMS[key]
    return _BY_BASENAME.get(key.rsplit("/", 1)[-1], DEFAULT_DIM)


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
