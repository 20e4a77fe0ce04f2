"""The answerer interface, the context it is given, and the sources of its answer.

Document items of the merged retrieval list become numbered context blocks [1]..[n] in merged
rank order; adjacent chunks of one document that share a page collapse into one block with a page
range, so a passage cut by a chunk boundary is read, cited and shown once. Chat-history items
become memories, which inform an answer but are never cited. An answerer streams the answer text;
the sources of a turn are every block it was given, in rank order, each flagged `cited` when the
answer cites its [n].
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
# "[2]" or "[1, 3]" not glued to a word or another bracket: "a[2, 1]" and "Lst[[1]]" in a quoted
# passage are the document's own text, not citations
_CITED = re.compile(r"(?<![\w\[(])\[(\d+(?:\s*,\s*\d+)*)\]")


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
    chunk_index_end: int = -1  # the last chunk of a collapsed block; -1: just chunk_index

    @property
    def last_chunk(self) -> int:
        return self.chunk_index if self.chunk_index_end < 0 else self.chunk_index_end

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

    def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        """The answer text in pieces, in order."""
        ...

    async def close(self) -> None: ...


@dataclass
class Context:
    documents: list[DocumentBlock] = field(default_factory=list)
    memories: list[Memory] = field(default_factory=list)


def _join_overlapping(first: str, second: str) -> str:
    """`second` appended to `first` without the text they share (a chunk opens with its predecessor's
    trailing sentences)."""
    for size in range(min(len(first), len(second), 600), 15, -1):
        if first.endswith(second[:size]):
            return first + second[size:]
    return f"{first}\n\n{second}"


@dataclass
class _Group:
    document_id: str
    filename: str
    score: float
    chunks: dict[int, tuple[str, int, int]]  # chunk index → (text, page_start, page_end)

    def touches(self, hit: retrieval_pb2.DocumentChunkHit) -> bool:
        """The hit continues this passage: the next or previous chunk, sharing a page with it (chunks
        on pages of their own stay separate sources, so a citation keeps its page)."""
        if hit.document_id != self.document_id:
            return False
        for neighbour in (hit.chunk_index - 1, hit.chunk_index + 1):
            if neighbour in self.chunks:
                _, start, end = self.chunks[neighbour]
                if start <= max(hit.page_end, hit.page_start) and hit.page_start <= max(end, start):
                    return True
        return False

    def block(self, marker: int) -> DocumentBlock:
        ordered = sorted(self.chunks.items())
        text = ordered[0][1][0]
        for _, (chunk_text, _, _) in ordered[1:]:
            text = _join_overlapping(text, chunk_text)
        starts = [start for _, (_, start, _) in ordered if start]
        ends = [end for _, (_, _, end) in ordered if end]
        return DocumentBlock(marker=marker, text=text, score=self.score, document_id=self.document_id,
                             filename=self.filename, chunk_index=ordered[0][0], page_start=min(starts, default=0),
                             page_end=max(ends, default=0), chunk_index_end=ordered[-1][0])


def collapse(hits: Sequence[tuple[retrieval_pb2.DocumentChunkHit, str, float]]) -> list[DocumentBlock]:
    """Document hits (best first) as numbered blocks: adjacent chunks of one document that share a page
    become one block, at the rank of its best chunk, with that chunk's score."""
    groups: list[_Group] = []
    for hit, text, score in hits:
        touching = [group for group in groups if group.touches(hit)]
        if not touching:
            groups.append(_Group(hit.document_id, hit.filename, score,
                                 {hit.chunk_index: (text, hit.page_start, hit.page_end)}))
            continue
        kept = touching[0]  # the best-ranked one
        kept.chunks[hit.chunk_index] = (text, hit.page_start, hit.page_end)
        for other in touching[1:]:  # the new chunk bridged two blocks
            kept.chunks.update(other.chunks)
            groups.remove(other)
    return [group.block(marker) for marker, group in enumerate(groups, start=1)]


def context_from_search(results: Sequence[retrieval_pb2.SearchResult]) -> Context:
    hits = []
    memories = []
    for result in results:
        if result.source == retrieval_pb2.SEARCH_SOURCE_DOCUMENTS:
            hits.append((result.document, result.text, result.score))
        elif result.source == retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY:
            turn = result.chat_turn
            memories.append(Memory(turn_id=turn.turn_id, conversation_id=turn.conversation_id,
                                   user_message=turn.user_message, assistant_message=turn.assistant_message,
                                   score=result.score))
    return Context(documents=collapse(hits), memories=memories)


def cited_markers(answer: str) -> list[int]:
    """The [n] markers of `answer`, in order of first use ("[2, 3]" counts as both)."""
    seen: dict[int, None] = {}
    for match in _CITED.finditer(answer):
        for number in match.group(1).split(","):
            seen.setdefault(int(number), None)
    return list(seen)


def _citing_text(answer: str) -> dict[int, str]:
    """For each marker, the answer's sentences that cite it (markers removed): the sentence carrying
    the marker and the uncited ones right before it (a passage quoted over several sentences is
    cited once, after its last)."""
    cited: dict[int, list[str]] = {}
    pending: list[str] = []
    for sentence in sentences(answer):
        text = strip_markers(sentence).strip()
        markers = cited_markers(sentence)
        if text:
            pending.append(text)
        # "… write.dta. [1]": a marker after the full stop belongs to the sentences before it
        for number in markers:
            cited.setdefault(number, []).extend(pending)
        if markers:
            pending = []
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


def citations(answer: str, documents: Sequence[DocumentBlock], query: str = "") -> list[chat_pb2.Citation]:
    """Every block given to the answerer, in rank order, flagged when the answer cites it; each with
    the passage the answer drew on (or, uncited, the one matching the question best)."""
    citing = _citing_text(answer)
    cited = set(cited_markers(answer))
    return [
        chat_pb2.Citation(marker=block.marker, document_id=block.document_id, filename=block.filename,
                          chunk_index=block.chunk_index, chunk_index_end=block.last_chunk,
                          page_start=block.page_start, page_end=block.page_end, relevance_score=block.score,
                          snippet=snippet(block.text, citing.get(block.marker, query)), cited=block.marker in cited)
        for block in documents
    ]
