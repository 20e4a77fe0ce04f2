"""`docent eval`: the metrics by hand, the shipped suite's shape, and a smoke run through the REST API."""

from __future__ import annotations

import json
import math
import re

import pytest

from services.evaluation import report, runner, suite
from services.evaluation.metrics import Ranked, contains_gold, first_hit_rank, score, summarise
from tests.stack import start_up


def test_first_hit_rank_needs_the_gold_document_and_a_gold_page() -> None:
    items = [Ranked("other", 20, 20), Ranked("doc", 3, 4), Ranked("doc", 19, 20)]
    assert first_hit_rank(items, "doc", frozenset({20})) == 3
    assert first_hit_rank(items, "doc", frozenset({4, 20})) == 2
    assert first_hit_rank(items, "doc", frozenset({30})) is None
    # a file without pages (text, CSV): the document is the target
    assert first_hit_rank([Ranked("doc", 0, 0)], "doc", frozenset({1})) == 1


def test_metrics_by_hand() -> None:
    def outcome(sources_rank_doc: list[str], cited: list[bool], answer: str, gold: str):
        sources = [Ranked(doc, 1, 1, flag, marker) for marker, (doc, flag)
                   in enumerate(zip(sources_rank_doc, cited, strict=True), start=1)]
        return score("q", "c", "en", "gold", frozenset({1}), gold, answer, sources, sources, 10.0, False)

    rows = [outcome(["gold", "x"], [True, False], "It is 42 [1].", "is 42"),   # rank 1, cited, gold
            outcome(["x", "gold"], [True, False], "Nope [1].", "is 42"),       # rank 2, not cited
            outcome(["x"] * 6 + ["gold"], [False] * 7, "Maybe.", "")]         # rank 7, no gold string
    values = summarise(rows)
    assert values["sources_r@1"] == round(1 / 3, 4) and values["sources_r@5"] == round(2 / 3, 4)
    assert values["sources_r@10"] == 1.0
    assert values["sources_mrr"] == round((1 + 1 / 2 + 1 / 7) / 3, 4)
    assert values["sources_ndcg@10"] == round((1 + 1 / math.log2(3) + 1 / math.log2(8)) / 3, 4)
    assert values["cited_hit"] == round(1 / 3, 4)
    assert values["gold_in_answer"] == 0.5 and values["gold_questions"] == 2  # of the questions with a gold string
    assert values["cited_per_answer"] == round(2 / 3, 4)
    assert values["markers_valid"] == 1.0  # every [n] names a source
    bad = outcome(["gold"], [True], "It is 42 [3].", "is 42")
    assert not bad.markers_valid
    # containment ignores case, spacing, punctuation and citation markers
    assert contains_gold("Use os.remove(path) [2], or unlink.", "use OS.remove(path) , or")
    assert not contains_gold("anything", "")


def test_the_shipped_suite_is_broad_and_split() -> None:
    shipped = suite.load(suite.set_files())
    assert len(shipped.questions) >= 300 and len(shipped.corpora) >= 4
    assert {q.split for q in shipped.questions} == {"dev", "test"}
    assert len({q.id for q in shipped.questions}) == len(shipped.questions)
    assert {q.lang for q in shipped.questions} >= {"en", "de", "fr"}
    assert all(q.answer and q.pages for q in shipped.questions)
    assert all(document.path.exists() for document in shipped.documents)
    # each question's gold document is in the suite
    keys = {document.key for document in shipped.documents}
    assert all(q.document in keys for q in shipped.questions)


def test_a_smoke_eval_runs_through_the_rest_api(tmp_path) -> None:
    """Two questions per small corpus, with and without a chat history, against a real `docent up`."""
    import asyncio

    shipped = suite.load([path for path in suite.set_files() if path.stem in ("faq", "tables")])
    small = shipped.select(split="test", limit_per_corpus=2)
    pool = list(shipped.select(split="dev", limit_per_corpus=3).questions)
    memory = runner.Configuration("memory", "with history", memory_turns=4)
    up = start_up()
    try:
        up.wait_for("Docent is up", 180)
        results = asyncio.run(runner.evaluate(small, pool, [runner.CONFIGURATIONS["default"], memory],
                                              base_url=f"http://127.0.0.1:{up.ports['gateway']}",
                                              turns_log=tmp_path / "turns.jsonl", opaque_names=True))
    finally:
        up.stop()
    assert set(results) == {"default", "memory"}
    assert results["memory"]["history_turns"] == 4
    for values in (results["default"]["overall"], results["memory"]["overall"]):
        assert values["questions"] == 4
        assert values["context_r@10"] >= 0.75  # the first test questions of these corpora are found
        assert 0 < values["answer_words_p50"] < 80  # an answer, not a run of passages
    logged = [json.loads(line) for line in (tmp_path / "turns.jsonl").read_text().splitlines()]
    assert len(logged) == 8 and all("context" in item["reply"] for item in logged)
    # --opaque-names: the files were uploaded as document-NNN.<ext>, not under the suite's descriptive names
    shown = {source["filename"] for item in logged for source in item["reply"]["sources"]}
    assert shown and all(re.fullmatch(r"document-\d{3}\.(md|csv)", name) for name in shown), shown
    run = {"label": "smoke", "date": "today", "split": "test", "questions": 4, "corpora": {"faq": 2, "tables": 2},
           "command": "pytest", "configurations": results}
    assert "| default | 4 | all |" in report.markdown_table(run)
    assert report.plot([run], tmp_path / "quality.png") and (tmp_path / "quality.png").stat().st_size > 1000


@pytest.mark.parametrize("name", sorted(runner.CONFIGURATIONS))
def test_configurations_are_described(name: str) -> None:
    assert runner.CONFIGURATIONS[name].description
