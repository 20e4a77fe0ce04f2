"""The answerer interface, the context it is given, and the citations taken from its answer.

Document items of the merged retrieval list become numbered context blocks [1]..[n] (in merged
rank order); chat-history items become memories, which inform an answer but are never cited.
An answerer streams the answer text; the sources of a turn are the blocks its answer cites.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from docent.v1 import chat_pb2, retrieval_pb2
from services.chat.history import HistoryTurn
from services.chat.text import fold, normalise_space, sentences, shorten, strip_markers, words

NOT_FOUND_ANSWER = "I couldn't find this in your documents."
SNIPPET_CHARS = 300
_CITED = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class DocumentBlock:
    marker: int
    text: str
    score: float
    document_id: str
    filename: str
    chunk_index: int
    page_start: int
    page_end: int

    def label(self) -> str:
        if self.page_start and self.page_end and self.page_end != self.page_start:
            return f"{self.filename}, pages {self.page_start}-{self.page_end}"
        if self.page_start:
            return f"{self.filename}, page {self.page_start}"
        return self.filename


@dataclass(frozen=True)
class Memory:
    """A turn of an earlier conversation found by chat-history search."""

    turn_id: str
    conversation_id: str
    user_message: str
    assistant_message: str
    score: float


@dataclass(frozen=True)
class AnswerRequest:
    query: str
    standalone_query: str
    # recent turns of this conversation, oldest first
    history: Sequence[HistoryTurn] = ()
    documents: Sequence[DocumentBlock] = ()
    memories: Sequence[Memory] = ()

    @property
    def uses_chat_history(self) -> bool:
        return bool(self.history or self.memories)


class Answerer(Protocol):
    # recorded on the turn: "extractive" or the LLM's model name
    model: str
    # when the answer cites no block at all, are all document blocks its sources? (an LLM that
    # ignored the citation instruction still drew on them; the extractive answerer always cites)
    sources_when_uncited: bool

    def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        """The answer text in pieces, in order."""
        ...

    async def close(self) -> None: ...


@dataclass
class Context:
    documents: list[DocumentBlock] = field(default_factory=list)
    memories: list[Memory] = field(default_factory=list)


def context_from_search(results: Sequence[retrieval_pb2.SearchResult]) -> Context:
    context = Context()
    for result in results:
        if result.source == retrieval_pb2.SEARCH_SOURCE_DOCUMENTS:
            hit = result.document
            context.documents.append(DocumentBlock(
                marker=len(context.documents) + 1, text=result.text, score=result.score,
                document_id=hit.document_id, filename=hit.filename, chunk_index=hit.chunk_index,
                page_start=hit.page_start, page_end=hit.page_end))
        elif result.source == retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY:
            turn = result.chat_turn
            context.memories.append(Memory(turn_id=turn.turn_id, conversation_id=turn.conversation_id,
                                           user_message=turn.user_message,
                                           assistant_message=turn.assistant_message, score=result.score))
    return context


def cited_markers(answer: str) -> list[int]:
    """The [n] markers of `answer`, in order of first use ("[2, 3]" counts as both)."""
    seen: dict[int, None] = {}
    for match in _CITED.finditer(answer):
        for number in match.group(1).split(","):
            seen.setdefault(int(number), None)
    return list(seen)


def _citing_text(answer: str) -> dict[int, str]:
    """For each marker, the answer's sentences that cite it (markers removed)."""
    cited: dict[int, list[str]] = {}
    previous = ""
    for sentence in sentences(answer):
        # "… write.dta. [1]": a marker after the full stop belongs to the sentence before it
        text = strip_markers(sentence).strip() or previous
        for number in cited_markers(sentence):
            cited.setdefault(number, []).append(text)
        previous = text
    return {number: " ".join(parts) for number, parts in cited.items()}


def snippet(block_text: str, cited_by: str = "") -> str:
    """The passage of a block an answer drew on: its sentence sharing most words with the citing
    sentence (the very sentence, for a quote), widened with its neighbours up to SNIPPET_CHARS."""
    flat = normalise_space(block_text)
    quote = normalise_space(cited_by)
    position = flat.find(quote) if quote else -1
    if position >= 0:  # a quote: the window starts a little before it, on a word boundary
        start = max(0, position - 60)
        start = flat.rfind(" ", 0, start) + 1 if start > 0 else 0
        return ("… " if start > 0 else "") + shorten(flat[start:], SNIPPET_CHARS)
    parts = sentences(block_text)
    if not cited_by or len(parts) < 2:
        return shorten(flat, SNIPPET_CHARS)
    wanted = {fold(word) for word in words(cited_by)}
    best = max(range(len(parts)), key=lambda index: (len(wanted & {fold(w) for w in words(parts[index])}), -index))
    start, end = best, best + 1
    while True:
        grown = False
        if end < len(parts) and len(" ".join(parts[start:end + 1])) <= SNIPPET_CHARS:
            end, grown = end + 1, True
        if start > 0 and len(" ".join(parts[start - 1:end])) <= SNIPPET_CHARS:
            start, grown = start - 1, True
        if not grown:
            break
    text = normalise_space(" ".join(parts[start:end]))
    return ("… " if start > 0 else "") + shorten(text, SNIPPET_CHARS)


def citations(answer: str, documents: Sequence[DocumentBlock], *, all_when_uncited: bool) -> list[chat_pb2.Citation]:
    """The document blocks the answer used, in the order it cites them, each with the passage it drew on."""
    by_marker = {block.marker: block for block in documents}
    citing = _citing_text(answer)
    used = [by_marker[number] for number in cited_markers(answer) if number in by_marker]
    if not used and all_when_uncited and answer.strip() and not answer.startswith(NOT_FOUND_ANSWER):
        used = list(documents)
    return [
        chat_pb2.Citation(marker=block.marker, document_id=block.document_id, filename=block.filename,
                          chunk_index=block.chunk_index, page_start=block.page_start, page_end=block.page_end,
                          relevance_score=block.score,
                          snippet=snippet(block.text, citing.get(block.marker, "")))
        for block in used
    ]

