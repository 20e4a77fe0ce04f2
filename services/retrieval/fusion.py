"""Weighted reciprocal-rank fusion of ranked hit lists.

Hybrid search asks the store for two rankings of the same candidates: dense alone, and the store's
own dense + BM25 fusion (equal-weight RRF). Fusing them again by weight sets how much the lexical
signal may move the dense order: BM25 helps with identifiers and rare terms, and hurts on
paraphrased questions over short passages, so its share is a setting (DOCENT_HYBRID_DENSE_WEIGHT)
chosen on the dev split of `docent eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from services.retrieval.store import RRF_K, Hit


def weighted_rrf(rankings: Sequence[tuple[float, Sequence[Hit]]], limit: int, k: int = RRF_K) -> list[Hit]:
    """The best `limit` hits by Σ weight / (k + rank), each scored in [0, 1] (1: first in every ranking)."""
    total = sum(weight for weight, _ in rankings)
    if total <= 0:
        return []
    fused: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    for weight, ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.point_id] = fused.get(hit.point_id, 0.0) + weight / (k + rank)
            hits.setdefault(hit.point_id, hit)
    best = total / (k + 1)
    ordered = sorted(fused, key=lambda point: -fused[point])[:limit]
    return [replace(hits[point], score=min(1.0, fused[point] / best)) for point in ordered]
