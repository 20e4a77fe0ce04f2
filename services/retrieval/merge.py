"""Merging document hits and chat-history hits by weight.

The rules:
- each source's share of top_k is its weight (0.7 / 0.3 of 10 gives 7 + 3 slots);
- candidates under the source's minimum relevance are dropped;
- slots a source cannot fill with relevant hits go to the other source (never to a source
  whose weight is 0: that source is switched off);
- the merged list is ordered by weight × score; every item keeps its source, raw score, weight,
  merged rank and rank within its source (the explain view).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.retrieval.store import Hit, Source


@dataclass(frozen=True)
class Weights:
    documents: float
    chat_history: float

    def of(self, source: Source) -> float:
        return self.documents if source is Source.DOCUMENTS else self.chat_history


@dataclass(frozen=True)
class MergedItem:
    source: Source
    hit: Hit
    score: float
    weight: float
    weighted_score: float
    rank: int
    source_rank: int


@dataclass(frozen=True)
class MergeResult:
    items: list[MergedItem]
    document_slots: int
    chat_history_slots: int
    dropped_below_min_score: int

    @property
    def chat_context_used(self) -> bool:
        return any(item.source is Source.CHAT_HISTORY for item in self.items)


def allocate_slots(top_k: int, weights: Weights) -> tuple[int, int]:
    """Slots for (documents, chat history), proportional to the weights."""
    total = weights.documents + weights.chat_history
    if total <= 0:
        return 0, 0
    if weights.chat_history <= 0:
        return top_k, 0
    if weights.documents <= 0:
        return 0, top_k
    documents = round(top_k * weights.documents / total)
    # a source with a non-zero weight keeps at least one slot when top_k allows it
    documents = min(max(documents, 1), top_k - 1) if top_k >= 2 else documents
    return documents, top_k - documents


def merge(document_hits: Sequence[Hit], chat_hits: Sequence[Hit], *, top_k: int, weights: Weights,
          min_score_documents: float, min_score_chat_history: float) -> MergeResult:
    """Merge two best-first hit lists into at most top_k items, as the module docstring says."""
    document_slots, chat_slots = allocate_slots(top_k, weights)
    relevant_documents = [(rank, hit) for rank, hit in enumerate(document_hits, 1)
                          if hit.score >= min_score_documents] if weights.documents > 0 else []
    relevant_chat = [(rank, hit) for rank, hit in enumerate(chat_hits, 1)
                     if hit.score >= min_score_chat_history] if weights.chat_history > 0 else []
    dropped = (len(document_hits) - len(relevant_documents) if weights.documents > 0 else 0) + \
              (len(chat_hits) - len(relevant_chat) if weights.chat_history > 0 else 0)

    take_documents = min(len(relevant_documents), document_slots)
    take_chat = min(len(relevant_chat), chat_slots)
    # unused slots move to the other source, if it has relevant hits to spare
    spare_from_documents = document_slots - take_documents
    spare_from_chat = chat_slots - take_chat
    take_chat = min(len(relevant_chat), take_chat + spare_from_documents)
    take_documents = min(len(relevant_documents), take_documents + spare_from_chat)

    chosen: list[tuple[Source, int, Hit]] = [
        *((Source.DOCUMENTS, rank, hit) for rank, hit in relevant_documents[:take_documents]),
        *((Source.CHAT_HISTORY, rank, hit) for rank, hit in relevant_chat[:take_chat]),
    ]
    chosen.sort(key=lambda entry: (-(weights.of(entry[0]) * entry[2].score), entry[1]))
    items = [
        MergedItem(source=source, hit=hit, score=hit.score, weight=weights.of(source),
                   weighted_score=weights.of(source) * hit.score, rank=position, source_rank=source_rank)
        for position, (source, source_rank, hit) in enumerate(chosen, 1)
    ]
    return MergeResult(items, document_slots, chat_slots, dropped)
