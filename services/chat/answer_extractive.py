"""The offline answerer: quotes the most relevant retrieved sentences, with citation markers.

No model and no network: it runs in well under a millisecond for a normal context, and it never
invents text — every sentence of an answer is copied from the context (document blocks, earlier
answers found in chat history, or this conversation's recent answers), with only fixed framing
("From an earlier conversation:", "Earlier in this conversation:") and the [n] markers added.

Scoring, per candidate sentence:
- lexical: the IDF-weighted share of the user's own key terms the sentence contains, plus 0.35 ×
  the share of the terms a follow-up rewrite carried over from earlier questions (so "and SPSS
  files?" is about SPSS: a sentence matching only the previous subject cannot outrank one
  matching the new one);
- plus 0.3 × the retrieval score of the block it came from (cosine similarity), so among
  equally matching sentences the one from the better passage wins; chat-history sentences get
  a smaller share, so a document stating a fact outranks an earlier answer quoting it.
A sentence this conversation's recent answers already said scores half (unless the question
compares: "how does that compare to Q2?" needs the earlier figure again, so there the carried
terms count fully). At most three sentences
within 55 % of the best score are quoted, best first; a sentence that also appears in a document
is quoted once, from the document. Nothing matching → say so.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.chat.answer import NOT_FOUND_ANSWER, AnswerRequest
from services.chat.text import fold, key_terms, normalise_space, sentences, shorten, strip_markers, words

MAX_SENTENCES = 3
RELATIVE_CUTOFF = 0.55
RETRIEVAL_SHARE = 0.3
CHAT_RETRIEVAL_DISCOUNT = 0.5
HISTORY_RETRIEVAL_SCORE = 0.3  # this conversation's recent answers carry no search score
CARRIED_TERM_SHARE = 0.35
REPEAT_PENALTY = 0.5
COMPARATIVE = frozenset({"compare", "compared", "comparison", "versus", "vs", "difference", "differ", "than"})
MAX_SENTENCE_CHARS = 400
# a document block this similar to the question is quoted even without shared words
SEMANTIC_FALLBACK_SCORE = 0.55
CHAT_PREFIX = "From an earlier conversation: "
HISTORY_PREFIX = "Earlier in this conversation: "
DOCUMENT, MEMORY, HISTORY = "document", "memory", "history"


@dataclass
class Candidate:
    text: str
    origin: str
    marker: int  # document blocks only; 0 otherwise
    retrieval: float
    order: int
    terms: frozenset[str]
    score: float = 0.0


def _terms(text: str) -> frozenset[str]:
    return frozenset(fold(word) for word in words(text))


def _is_own_framing(sentence: str) -> bool:
    return sentence.startswith(NOT_FOUND_ANSWER[:20]) or sentence.startswith("The closest passage")


def _candidates(request: AnswerRequest) -> list[Candidate]:
    found: list[Candidate] = []

    def add(text: str, origin: str, marker: int, retrieval: float) -> None:
        for sentence in sentences(text):
            sentence = sentence.removeprefix(CHAT_PREFIX).removeprefix(HISTORY_PREFIX)
            if len(sentence) < 3 or _is_own_framing(sentence):
                continue
            found.append(Candidate(shorten(sentence, MAX_SENTENCE_CHARS), origin, marker, retrieval, len(found),
                                   _terms(sentence)))

    for block in request.documents:
        add(block.text, DOCUMENT, block.marker, block.score)
    for memory in request.memories:
        add(strip_markers(memory.assistant_message), MEMORY, 0, memory.score * CHAT_RETRIEVAL_DISCOUNT)
    for turn in request.history:
        add(strip_markers(turn.answer), HISTORY, 0, HISTORY_RETRIEVAL_SCORE * CHAT_RETRIEVAL_DISCOUNT)
    return found


def _dedupe_key(text: str) -> str:
    return " ".join(words(text))


def _share(terms: list[str], idf: dict[str, float], candidate: Candidate) -> float:
    total = sum(idf[term] for term in terms)
    return sum(idf[term] for term in terms if term in candidate.terms) / total if total else 0.0


def rank(request: AnswerRequest) -> list[Candidate]:
    """Candidate sentences that share terms with the question, best first, duplicates removed."""
    candidates = _candidates(request)
    own = key_terms(request.query)
    carried = [term for term in key_terms(request.standalone_query) if term not in own]
    if not candidates or not (own or carried):
        return []
    total = len(candidates)
    idf = {term: math.log(1 + total / (1 + sum(term in c.terms for c in candidates))) for term in own + carried}
    said = {_dedupe_key(sentence) for turn in request.history for sentence in sentences(strip_markers(turn.answer))}
    comparing = bool(COMPARATIVE & {word.lower() for word in words(request.query)})
    unique: dict[str, Candidate] = {}
    for candidate in candidates:
        own_share, carried_share = _share(own, idf, candidate), _share(carried, idf, candidate)
        if own_share <= 0 and carried_share <= 0:
            continue
        # a comparison is about the earlier subject as much as the new one
        carried_weight = 1.0 if comparing else CARRIED_TERM_SHARE
        lexical = own_share + carried_weight * carried_share if own else carried_share
        candidate.score = lexical + RETRIEVAL_SHARE * candidate.retrieval
        key = _dedupe_key(candidate.text)
        if not comparing and (key in said or candidate.origin == HISTORY):
            candidate.score *= REPEAT_PENALTY
        kept = unique.get(key)
        # the same sentence from a document beats an earlier answer quoting it
        if kept is None or (kept.origin != DOCUMENT and candidate.origin == DOCUMENT) or (
                kept.origin == candidate.origin and candidate.score > kept.score):
            unique[key] = candidate
    return sorted(unique.values(), key=lambda c: (-c.score, c.order))


def compose(request: AnswerRequest) -> list[str]:
    """The answer as sentences (each with its marker or framing); joined with spaces it is the answer."""
    ranked = rank(request)
    if ranked:
        best = ranked[0].score
        chosen = [c for c in ranked if c.score >= RELATIVE_CUTOFF * best][:MAX_SENTENCES]
        return [_render(candidate) for candidate in chosen]
    top = request.documents[0] if request.documents else None
    if top is not None and top.score >= SEMANTIC_FALLBACK_SCORE:
        first = sentences(top.text)[:2]
        if first:
            passage = shorten(" ".join(first), MAX_SENTENCE_CHARS)
            return [f"The closest passage I found: {passage} [{top.marker}]"]
    return [NOT_FOUND_ANSWER]


def _render(candidate: Candidate) -> str:
    if candidate.origin == DOCUMENT:
        return f"{candidate.text} [{candidate.marker}]"
    return (CHAT_PREFIX if candidate.origin == MEMORY else HISTORY_PREFIX) + normalise_space(candidate.text)


class ExtractiveAnswerer:
    model = "extractive"
    sources_when_uncited = False

    async def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        for index, piece in enumerate(compose(request)):
            yield piece if index == 0 else f" {piece}"

    async def close(self) -> None:
        return None
