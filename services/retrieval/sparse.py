"""BM25 sparse vectors (qdrant-edge's Bm25 helper: stemming, stop words, hashed terms).

Documents get term-frequency weights; queries get 1.0 per unique term; the collections apply
IDF at query time (Modifier.Idf), so the result is BM25. The same vectors work for the server
adapter, so hybrid search behaves alike on both.

Chinese, Japanese and Korean text has no spaces between words, so the word tokenizer made a whole
sentence one term and BM25 never matched it. Runs of those scripts become overlapping character
bigrams first (what CJK analyzers of search engines do): a Japanese question then shares terms with
the passage that answers it. Text without those scripts is untouched, so its vectors are the same as
before; documents indexed before this match CJK questions once `docent reindex` rebuilds them.
"""

from __future__ import annotations

import re

import qdrant_edge as qe

from services.retrieval.store import SparseVector

_model = qe.Bm25()
# Hiragana, Katakana (and its prolonged sound mark), CJK ideographs (with extension A and compatibility),
# the ideographic iteration mark, Hangul syllables
_CJK_RUN = re.compile(r"[\u3005\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")


def _bigrams(match: re.Match[str]) -> str:
    run = match.group(0)
    if len(run) == 1:
        return f" {run} "
    return " " + " ".join(run[index:index + 2] for index in range(len(run) - 1)) + " "


def segment(text: str) -> str:
    """The text as the BM25 tokenizer should see it: CJK runs as space-separated character bigrams."""
    return _CJK_RUN.sub(_bigrams, text)


def document_vector(text: str) -> SparseVector:
    vector = _model.embed_document(segment(text))
    return SparseVector(list(vector.indices), list(vector.values))


def query_vector(text: str) -> SparseVector:
    vector = _model.embed_query(segment(text))
    return SparseVector(list(vector.indices), list(vector.values))
