"""The benchmark harness still runs (the benchmarks themselves are `make bench`, not part of the tests)."""

from __future__ import annotations

import asyncio
import json

from bench import memory_recall, report, scale
from bench.stats import percentile, slope, summary


def test_stats() -> None:
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([10, 20], 0.99) == 19.9
    assert summary([1.0, 3.0])["p50_ms"] == 2.0
    assert slope([0, 1, 2], [5, 7, 9]) == 2.0


def test_scale_section_and_report_write_json_markdown_and_plots(tmp_path) -> None:
    rows = asyncio.run(scale.measure("edge", [500, 1000]))
    rows += asyncio.run(scale.measure("qdrant-local", [500]))
    assert [row["chunks"] for row in rows] == [500, 1000, 500]
    assert all(row["p50_ms"] > 0 and row["n"] == scale.QUERIES for row in rows)
    results = {
        "meta": {"date": "today", "mode": "smoke", "command": "pytest", "seconds": 1.0, "machine": "test"},
        "ingest": {}, "scale": rows, "notes": ["smoke"],
        "search": {"1": {"p50_ms": 5.0, "p99_ms": 9.0, "req_per_s": 100.0, "floor_p50_ms": 4.0, "errors": 0,
                         "overhead_p50_ms": 1.0, "breakdown_p50_ms": {"embed_ms": 3.0}}},
        "soak": {"rss_samples": [(0.0, {"gateway": 100.0}), (60.0, {"gateway": 101.0})], "errors": 0},
    }
    json_path, md_path = report.write(results, tmp_path, "smoke")
    assert json.loads(json_path.read_text())["scale"] == rows
    text = md_path.read_text()
    assert "| gRPC Search overhead over the server floor, p50, 1 client | ≤ 3.0 ms | 1.0 | met |" in text
    assert {path.name for path in tmp_path.glob("*.png")} == {"smoke-latency.png", "smoke-scale.png",
                                                               "smoke-soak-rss.png"}


def test_memory_recall_finds_earlier_turns_through_the_real_retrieval_service() -> None:
    """The memory-recall eval end to end with one strategy; the floor is well under what it measures
    (recall@5 0.89 for the question vector, bench/results/2026-12-01-quick.md)."""
    results = asyncio.run(memory_recall.run(["question"]))
    figures = results["question"]
    assert figures["questions"] == 111 and figures["turns"] == 125
    assert figures["recall_at_5"] >= 0.8 and figures["recall_at_1"] <= figures["recall_at_5"]
