"""The weighted merge of documents and chat history (pure rules)."""

from __future__ import annotations

import pytest

from services.retrieval.merge import Weights, allocate_slots, merge
from services.retrieval.store import Hit, Source

DEFAULT = Weights(0.7, 0.3)


def hits(prefix: str, scores: list[float]) -> list[Hit]:
    return [Hit(f"{prefix}{index}", score, {"text": f"{prefix}{index}"}) for index, score in enumerate(scores)]


def run(documents, chat, weights=DEFAULT, top_k=10, min_documents=0.2, min_chat=0.3):
    return merge(documents, chat, top_k=top_k, weights=weights,
                 min_score_documents=min_documents, min_score_chat_history=min_chat)


@pytest.mark.parametrize(("top_k", "weights", "expected"), [
    (10, DEFAULT, (7, 3)), (10, Weights(1, 0), (10, 0)), (10, Weights(0, 1), (0, 10)),
    (10, Weights(0.5, 0.5), (5, 5)), (3, DEFAULT, (2, 1)), (1, DEFAULT, (1, 0)), (10, Weights(0.99, 0.01), (9, 1)),
])
def test_slots_follow_the_weights(top_k, weights, expected) -> None:
    assert allocate_slots(top_k, weights) == expected


def test_seven_and_three_with_plenty_of_both() -> None:
    result = run(hits("d", [0.9 - i * 0.01 for i in range(10)]), hits("c", [0.95 - i * 0.01 for i in range(10)]))
    sources = [item.source for item in result.items]
    assert sources.count(Source.DOCUMENTS) == 7 and sources.count(Source.CHAT_HISTORY) == 3
    assert result.chat_context_used
    # the best of each source made it, in their own order
    assert [item.hit.point_id for item in result.items if item.source is Source.CHAT_HISTORY] == ["c0", "c1", "c2"]


def test_ordered_by_weight_times_score_with_explain_fields() -> None:
    result = run(hits("d", [0.5, 0.3]), hits("c", [0.9]))
    weighted = [item.weighted_score for item in result.items]
    assert weighted == sorted(weighted, reverse=True)
    first = result.items[0]
    # 0.7 * 0.5 = 0.35 beats 0.3 * 0.9 = 0.27, which beats 0.7 * 0.3 = 0.21
    assert (first.hit.point_id, first.weight, first.score, first.rank, first.source_rank) == ("d0", 0.7, 0.5, 1, 1)
    chat = next(item for item in result.items if item.source is Source.CHAT_HISTORY)
    assert chat.weighted_score == pytest.approx(0.27) and chat.rank == 2 and chat.source_rank == 1
    assert [item.rank for item in result.items] == [1, 2, 3]


def test_all_ten_to_documents_when_chat_history_is_empty() -> None:
    result = run(hits("d", [0.8] * 12), [])
    assert len(result.items) == 10 and all(item.source is Source.DOCUMENTS for item in result.items)
    assert not result.chat_context_used


def test_all_ten_to_documents_when_chat_history_is_irrelevant() -> None:
    result = run(hits("d", [0.8] * 12), hits("c", [0.1, 0.05, 0.2]))
    assert [item.source for item in result.items] == [Source.DOCUMENTS] * 10
    assert result.dropped_below_min_score == 3 and not result.chat_context_used


def test_unfilled_document_slots_go_to_chat_history() -> None:
    result = run(hits("d", [0.8, 0.7]), hits("c", [0.9] * 10))
    sources = [item.source for item in result.items]
    assert sources.count(Source.DOCUMENTS) == 2 and sources.count(Source.CHAT_HISTORY) == 8


def test_weights_one_zero_and_zero_one() -> None:
    only_documents = run(hits("d", [0.5] * 10), hits("c", [0.99] * 10), weights=Weights(1, 0))
    assert {item.source for item in only_documents.items} == {Source.DOCUMENTS}
    assert len(only_documents.items) == 10 and not only_documents.chat_context_used
    only_chat = run(hits("d", [0.99] * 10), hits("c", [0.5] * 10), weights=Weights(0, 1))
    assert {item.source for item in only_chat.items} == {Source.CHAT_HISTORY}
    assert len(only_chat.items) == 10 and only_chat.chat_context_used


def test_a_switched_off_source_never_receives_spare_slots() -> None:
    result = run([], hits("c", [0.9] * 10), weights=Weights(1, 0))
    assert result.items == []


def test_fewer_relevant_hits_than_top_k() -> None:
    result = run(hits("d", [0.9, 0.1]), hits("c", [0.2]))
    assert [item.hit.point_id for item in result.items] == ["d0"]
    assert result.dropped_below_min_score == 2
