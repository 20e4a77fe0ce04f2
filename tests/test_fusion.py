"""Weighted reciprocal-rank fusion, by hand."""

from __future__ import annotations

import pytest

from services.retrieval.fusion import weighted_rrf
from services.retrieval.store import RRF_K, Hit


def hits(*ids: str) -> list[Hit]:
    return [Hit(point_id, 0.5) for point_id in ids]


def test_the_weight_decides_which_ranking_leads() -> None:
    dense, lexical = hits("a", "b", "c"), hits("c", "b", "a")
    assert [h.point_id for h in weighted_rrf([(0.8, dense), (0.2, lexical)], 3)] == ["a", "b", "c"]
    assert [h.point_id for h in weighted_rrf([(0.2, dense), (0.8, lexical)], 3)] == ["c", "b", "a"]
    # weight 0 for one ranking: the other alone, and hits only it had still come last
    assert [h.point_id for h in weighted_rrf([(1.0, hits("a", "b")), (0.0, hits("z"))], 3)] == ["a", "b", "z"]


def test_scores_are_normalised_and_the_limit_holds() -> None:
    fused = weighted_rrf([(0.5, hits("a", "b")), (0.5, hits("a", "c"))], 2)
    assert [h.point_id for h in fused] == ["a", "b"] or [h.point_id for h in fused] == ["a", "c"]
    assert fused[0].score == pytest.approx(1.0)  # first in both rankings
    assert fused[1].score == pytest.approx(0.5 * (RRF_K + 1) / (RRF_K + 2))
    assert weighted_rrf([(0.0, hits("a"))], 5) == []
