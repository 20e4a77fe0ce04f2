"""BM25 sparse vectors (qdrant-edge's Bm25 helper: stemming, stop words, hashed terms).

Documents get term-frequency weights; queries get 1.0 per unique term; the collections apply
IDF at query time (Modifier.Idf), so the result is BM25. The same vectors work for the server
adapter, so hybrid search behaves alike on both.
"""

from __future__ import annotations

import qdrant_edge as qe

from services.retrieval.store import SparseVector

_model = qe.Bm25()


def document_vector(text: str) -> SparseVector:
    vector = _model.embed_document(text)
    return SparseVector(list(vector.indices), list(vector.values))


def query_vector(text: str) -> SparseVector:
    vector = _model.embed_query(text)
    return SparseVector(list(vector.indices), list(vector.values))
