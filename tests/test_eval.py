"""`docent eval`: the metrics, and a small run through the real pipeline."""

from __future__ import annotations

import json

from docent.v1 import retrieval_pb2
from services.retrieval.evaluate import DEFAULT_SET, first_hit_rank, format_table, metrics, run_eval
from tests.conftest import create_database, make_settings, token
from tests.ingest_harness import ingest_stack


def result(document_id: str, start: int, end: int) -> retrieval_pb2.SearchResult:
    return retrieval_pb2.SearchResult(document=retrieval_pb2.DocumentChunkHit(
        document_id=document_id, page_start=start, page_end=end))


def test_first_hit_rank_needs_the_gold_document_and_a_gold_page() -> None:
    results = [result("other", 20, 20), result("doc", 3, 4), result("doc", 19, 20)]
    assert first_hit_rank(results, "doc", frozenset({20})) == 3
    assert first_hit_rank(results, "doc", frozenset({4, 20})) == 2
    assert first_hit_rank(results, "doc", frozenset({30})) is None


def test_metrics_by_hand() -> None:
    # ranks 1, 2, 6, miss → recall@1 1/4, @5 2/4, @10 3/4; MRR (1 + 1/2 + 1/6) / 4
    scores = metrics([1, 2, 6, None])
    assert scores == {"recall@1": 0.25, "recall@5": 0.5, "recall@10": 0.75, "mrr": round((1 + 0.5 + 1 / 6) / 4, 4)}


def test_the_shipped_set_is_well_formed() -> None:
    spec = json.loads(DEFAULT_SET.read_text())
    assert len(spec["questions"]) >= 40
    assert all(item["pages"] and item["document"] == "r-data" for item in spec["questions"])


async def test_a_small_eval_runs_through_the_real_pipeline(backing, embedder, tmp_path) -> None:
    spec = json.loads(DEFAULT_SET.read_text())
    spec["questions"] = spec["questions"][:3]
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps(spec))
    settings = make_settings(backing, database_url=await create_database(backing.database_url))
    async with ingest_stack(settings, embedder) as running:
        worker = running.worker().start()
        try:
            report = await run_eval(subset, ingest_target=running.ingest_target,
                                    retrieval_target=running.settings.target("retrieval"), token=token("eval-user"))
        finally:
            worker.stop()
    assert report["questions"] == 3 and set(report["modes"]) == {"dense", "hybrid"}
    for values in report["modes"].values():
        assert values["recall@10"] == 1.0  # the first three questions are easy look-ups
        assert 0 < values["mrr"] <= 1
    assert "recall@1" in format_table(report)
