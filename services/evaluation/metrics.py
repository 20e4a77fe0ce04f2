"""What one answer scores, and the averages over many.

A ranked item (a context entry or a source) is a hit when it comes from the gold document and its
page range holds a gold page. Each question has one target (its answer's page), so nDCG@10 is
1 / log2(1 + rank of the first hit), and recall@k is "a hit within the first k".
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

CUTOFFS = (1, 5, 10)
_MARKER = re.compile(r"(?<![\w\[(])\[\d+(?:\s*,\s*\d+)*\]")  # as services/chat/answer.py reads them
_NON_WORD = re.compile(r"[^\w%$.]+")


@dataclass(frozen=True)
class Ranked:
    document_id: str
    page_start: int
    page_end: int
    cited: bool = True
    marker: int = 0  # the [n] this source answers to (sources only)


def is_hit(item: Ranked, document_id: str, pages: frozenset[int]) -> bool:
    if item.document_id != document_id:
        return False
    if not pages or (item.page_start == 0 and item.page_end == 0):
        return True  # a file without pages: the document is the target
    return any(item.page_start <= page <= max(item.page_end, item.page_start) for page in pages)


def first_hit_rank(items: Sequence[Ranked], document_id: str, pages: frozenset[int]) -> int | None:
    for rank, item in enumerate(items, start=1):
        if is_hit(item, document_id, pages):
            return rank
    return None


def normalise(text: str) -> str:
    """Lower-cased words for containment checks: markers, punctuation and spacing do not count."""
    return " ".join(_NON_WORD.sub(" ", _MARKER.sub(" ", text).lower()).replace(". ", " ").split()).strip(" .")


def cited_numbers(answer: str) -> list[int]:
    return [int(number) for marker in _MARKER.findall(answer) for number in re.findall(r"\d+", marker)]


def contains_gold(answer: str, gold: str) -> bool:
    return bool(gold) and normalise(gold) in normalise(answer)


@dataclass(frozen=True)
class Outcome:
    """One question asked once."""

    question_id: str
    corpus: str
    lang: str
    context_rank: int | None
    sources_rank: int | None
    cited_hit: bool
    cited_count: int
    source_count: int
    has_gold: bool
    gold_in_answer: bool
    answer_words: int
    latency_ms: float
    not_found: bool
    failed: bool = False  # the chat call itself failed (an error status): a miss
    markers_valid: bool = True  # every [n] of the answer names a source it was given
    cited_precision: float = 0.0  # share of the cited sources that hold the answer page (0 when none cited)


def score(question_id: str, corpus: str, lang: str, document_id: str, pages: frozenset[int], gold: str,
          answer: str, context: Sequence[Ranked], sources: Sequence[Ranked], latency_ms: float,
          not_found: bool, failed: bool = False) -> Outcome:
    return Outcome(
        question_id=question_id, corpus=corpus, lang=lang,
        context_rank=first_hit_rank(context, document_id, pages),
        sources_rank=first_hit_rank(sources, document_id, pages),
        cited_hit=any(item.cited and is_hit(item, document_id, pages) for item in sources),
        cited_count=sum(item.cited for item in sources), source_count=len(sources),
        has_gold=bool(gold), gold_in_answer=contains_gold(answer, gold),
        answer_words=len(_MARKER.sub(" ", answer).split()), latency_ms=latency_ms, not_found=not_found,
        failed=failed, markers_valid=set(cited_numbers(answer)) <= {item.marker for item in sources},
        cited_precision=_precision([is_hit(item, document_id, pages) for item in sources if item.cited]))


def _precision(cited_hits: list[bool]) -> float:
    return sum(cited_hits) / len(cited_hits) if cited_hits else 0.0


def _ranking(ranks: list[int | None], prefix: str) -> dict[str, float]:
    total = len(ranks) or 1
    values = {f"{prefix}_r@{k}": sum(1 for r in ranks if r is not None and r <= k) / total for k in CUTOFFS}
    values[f"{prefix}_mrr"] = sum(1 / r for r in ranks if r is not None) / total
    values[f"{prefix}_ndcg@10"] = sum(1 / math.log2(1 + r) for r in ranks if r is not None and r <= 10) / total
    return values


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else 0.0


def summarise(outcomes: Iterable[Outcome]) -> dict[str, float]:
    rows = list(outcomes)
    if not rows:
        return {"questions": 0}
    with_gold = [row for row in rows if row.has_gold]
    values: dict[str, float] = {"questions": len(rows)}
    values.update(_ranking([row.context_rank for row in rows], "context"))
    values.update(_ranking([row.sources_rank for row in rows], "sources"))
    values["cited_hit"] = sum(row.cited_hit for row in rows) / len(rows)
    values["cited_precision"] = sum(row.cited_precision for row in rows) / len(rows)
    values["gold_in_answer"] = (sum(row.gold_in_answer for row in with_gold) / len(with_gold)) if with_gold else 0.0
    values["gold_questions"] = len(with_gold)
    values["cited_per_answer"] = statistics.fmean(row.cited_count for row in rows)
    values["not_found"] = sum(row.not_found for row in rows) / len(rows)
    values["failed"] = sum(row.failed for row in rows)
    # groundedness of the citations: every [n] names a passage the answerer was given
    values["markers_valid"] = sum(row.markers_valid for row in rows) / len(rows)
    values["answer_words_p50"] = statistics.median(row.answer_words for row in rows)
    answered = [row.latency_ms for row in rows if not row.failed] or [0.0]
    values["latency_ms_p50"] = statistics.median(answered)
    values["latency_ms_p95"] = percentile(answered, 0.95)
    return {name: round(value, 4) for name, value in values.items()}


def by_group(outcomes: Sequence[Outcome], key: str) -> Mapping[str, dict[str, float]]:
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault(getattr(outcome, key), []).append(outcome)
    return {name: summarise(rows) for name, rows in sorted(groups.items())}
