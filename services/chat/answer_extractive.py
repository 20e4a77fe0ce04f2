"""The offline answerer: the sentence(s) of the retrieved passages that answer the question, cited.

No model and no network, a few milliseconds: it never invents text. Every sentence of an
answer is copied from the context (a document block, or an earlier answer when the question asks
about the past), with only fixed framing and the [n] marker added.

How a sentence is chosen:
- Passages are read line by line, so a heading or a question line ("How do I read SPSS files?")
  is recognised: it never is the answer, but it tells what the sentences under it answer.
- Each candidate sentence scores its IDF-weighted share of the user's own key terms, plus a share
  of the terms a follow-up carried over ("and SPSS?" is about SPSS first, the previous subject
  second); plus what the heading or question line above it shares with the question (an FAQ
  entry whose question matches answers in its first sentences); plus the retrieval score of its
  passage (relative to the top one) and a bonus for the passage's rank, so among equally matching
  sentences the best passage wins. Code-like sentences score less. Weights: tuned on the dev split
  of bench/eval with `python -m bench.replay_answers` (docs/QUALITY.md).
- Identifiers the question quotes or writes as code ('q', `%A`) must match whole, case-sensitively:
  word matching drops one-letter and symbol tokens, and table questions live on them.
- The answer leads with the best sentence, started from the opening of its section when it is
  among the section's first sentences (an FAQ entry answers first, then elaborates), or from the
  sentence before it when it cannot stand alone ("This …", a lower-case continuation), and
  continued while its paragraph goes on (CONTINUE_WORDS; a list after "as follows:" up to
  ANSWER_WORDS). Then the next best sentences scoring at least RUNNER_UP_CUTOFF of the best are
  added, each with its own [n], while the answer stays under ANSWER_WORDS: a short answer that
  cites the passages it quotes, not a run of passages.
- A sentence this conversation already answered with scores less, unless the question compares.
- Earlier conversations (chat memory) are quoted only when the question asks about the past or
  no document sentence matches: a document that states a fact beats an old answer quoting it.
- Nothing matching: the closest passage when retrieval found one similar enough, else say so.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from services.chat.answer import NOT_FOUND_ANSWER, AnswerRequest
from services.chat.passages import MAX_SENTENCE_CHARS, Sentence, block_sentences, terms_of
from services.chat.text import key_terms, normalise_space, sentences, shorten, strip_markers, words

# tuned on the dev split of bench/eval (docs/QUALITY.md)
CARRIED_TERM_SHARE = 0.35
HEADING_SHARE = 0.6
RETRIEVAL_SHARE = 0.5
RANK_BONUS = 0.3
EXACT_SHARE = 1.0
CODE_PENALTY = 0.3
# an answer found in the first sentences under a matching heading starts at the heading
FROM_OPENING_WITHIN = 5
REPEAT_PENALTY = 0.5
COMPARISON_CUTOFF = 0.5
RUNNER_UP_CUTOFF = 0.55
MAX_PARTS = 4
ANSWER_WORDS = 60
CONTINUE_WORDS = 25
# a passage this similar to the question is offered even without shared words
SEMANTIC_FALLBACK_SCORE = 0.45
MEMORY_SCORE_SHARE = 0.6
COMPARATIVE = frozenset({"compare", "compared", "comparison", "versus", "vs", "difference", "differ", "than"})
ABOUT_THE_PAST = frozenset({"earlier", "before", "previously", "previous", "told", "said", "discussed", "remember",
                            "last", "ago", "asked", "conversation", "mentioned"})
LEANING_OPENERS = frozenset({"this", "it", "these", "they", "such", "that", "those", "its", "their", "then", "also"})
CHAT_PREFIX = "From an earlier conversation: "
HISTORY_PREFIX = "Earlier in this conversation: "
CLOSEST_PREFIX = "The closest passage I found: "
_EXACT = re.compile(r"'([^'\s]{1,24})'|\"([^\"\s]{1,24})\"|`([^`]{1,40})`|(?<!\S)(%[A-Za-z%:]{1,3})(?![\w])")


def _share(terms: Sequence[str], idf: dict[str, float], have: frozenset[str]) -> float:
    total = sum(idf[term] for term in terms)
    return sum(idf[term] for term in terms if term in have) / total if total else 0.0


def exact_tokens(query: str) -> list[re.Pattern[str]]:
    """Identifiers the question quotes or writes as code ('q', `%A`, "%%"): matched case-sensitively
    and whole, since word matching drops one-letter and symbol tokens (table questions live on them)."""
    found = []
    for match in _EXACT.finditer(query):
        token = next(group for group in match.groups() if group)
        found.append(re.compile(rf"(?<![\w%]){re.escape(token)}(?![\w])"))
    return found


@dataclass(frozen=True)
class Question:
    own: list[str]
    carried: list[str]
    comparing: bool
    about_the_past: bool
    exact: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def of(cls, request: AnswerRequest) -> Question:
        own = key_terms(request.query)
        carried = [term for term in key_terms(request.standalone_query) if term not in own]
        asked = {word.lower() for word in words(request.query)}
        return cls(own, carried, bool(COMPARATIVE & asked), bool(ABOUT_THE_PAST & asked),
                   tuple(exact_tokens(request.query)))

    def exact_share(self, text: str) -> float:
        return sum(1 for pattern in self.exact if pattern.search(text)) / len(self.exact) if self.exact else 0.0

    def match(self, idf: dict[str, float], have: frozenset[str]) -> float:
        own, carried = _share(self.own, idf, have), _share(self.carried, idf, have)
        if not self.own:
            return carried
        return own + (1.0 if self.comparing else CARRIED_TERM_SHARE) * carried


def document_sentences(request: AnswerRequest) -> list[Sentence]:
    candidates: list[Sentence] = []
    for block in request.documents:
        candidates.extend(block_sentences(block, len(candidates)))
    return candidates


def rank_document_sentences(request: AnswerRequest, question: Question,
                            candidates: Sequence[Sentence]) -> list[Sentence]:
    """Document sentences that share terms with the question (or sit under a heading that does), best first."""
    if not candidates or not (question.own or question.carried):
        return []
    total = len(candidates)
    idf = {term: math.log(1 + total / (1 + sum(term in c.lowered and term in c.terms for c in candidates)))
           for term in question.own + question.carried}
    said = {" ".join(words(sentence)) for turn in request.history for sentence in sentences(strip_markers(turn.answer))}
    top_score = request.documents[0].score
    heading_match: dict[str, float] = {}
    ranked = []
    terms = question.own + question.carried
    for candidate in candidates:
        lexical = question.match(idf, candidate.terms) if candidate.may_contain(terms) else 0.0
        heading = candidate.heading
        if heading not in heading_match:
            heading_match[heading] = question.match(idf, terms_of(heading)) if heading else 0.0
        under = heading_match[heading]
        exact = question.exact_share(candidate.text)
        if lexical <= 0 and under <= 0 and exact <= 0:
            continue
        block = candidate.block
        assert block is not None
        candidate.score = (lexical + HEADING_SHARE * under + EXACT_SHARE * exact
                           + RETRIEVAL_SHARE * (block.score - top_score) + RANK_BONUS / block.marker
                           - (CODE_PENALTY if candidate.code else 0.0))
        if not question.comparing and " ".join(words(candidate.text)) in said:
            candidate.score *= REPEAT_PENALTY
        ranked.append(candidate)
    return sorted(ranked, key=lambda c: (-c.score, c.order))


def _leans_on_previous(sentence: str) -> bool:
    """A sentence that cannot stand alone: it continues a cut line, or refers back ("This …")."""
    first = sentence.split(maxsplit=1)[0] if sentence.strip() else ""
    return first[:1].islower() or first.lower() in LEANING_OPENERS


def _continuation(best: Sentence, candidates: Sequence[Sentence]) -> list[Sentence]:
    """The answer's sentences: from the opening of best's section when best is one of its first
    sentences, else from best; then on while they continue it and the answer stays short."""
    same_block = sorted((c for c in candidates if c.block is best.block), key=lambda c: c.order)
    start = best
    if 0 < best.in_section <= FROM_OPENING_WITHIN and not best.row:
        opening = [c for c in same_block if c.order < best.order and c.heading == best.heading and c.in_section == 0]
        if opening and sum(len(c.text.split()) for c in same_block
                           if opening[-1].order <= c.order <= best.order) <= ANSWER_WORDS:
            start = opening[-1]
    elif _leans_on_previous(best.text):
        previous = [c for c in same_block if c.order == best.order - 1 and c.paragraph == best.paragraph]
        start = previous[0] if previous else best
    chosen = [c for c in same_block if start.order <= c.order <= best.order]
    length = sum(len(c.text.split()) for c in chosen)
    listing = False  # after "…as follows:", the list items continue the answer
    for sentence in (c for c in same_block if c.order > best.order):
        last = chosen[-1]
        listing = listing or last.text.endswith(":")
        if sentence.order != last.order + 1 or (sentence.paragraph != last.paragraph and not listing):
            break
        if sentence.heading != last.heading:
            break
        size = len(sentence.text.split())
        if length + size > (ANSWER_WORDS if listing else CONTINUE_WORDS):
            break
        chosen.append(sentence)
        length += size
    return chosen


def _memory_sentences(request: AnswerRequest, question: Question) -> list[tuple[float, str]]:
    """Sentences of earlier answers (other conversations, then this one) that match the question."""
    found: list[tuple[float, str, str]] = []
    for memory in request.memories:
        found.extend((memory.score, sentence, CHAT_PREFIX) for sentence in sentences(strip_markers(
            memory.assistant_message)))
    for turn in request.history:
        found.extend((0.0, sentence, HISTORY_PREFIX) for sentence in sentences(strip_markers(turn.answer)))
    found = [(score, text, prefix) for score, text, prefix in found
             if not text.startswith((NOT_FOUND_ANSWER[:20], CLOSEST_PREFIX.strip()))]
    if not found or not (question.own or question.carried):
        return []
    idf = {term: 1.0 for term in question.own + question.carried}
    scored = [(question.match(idf, terms_of(text)) + MEMORY_SCORE_SHARE * score, prefix + normalise_space(
        text.removeprefix(CHAT_PREFIX).removeprefix(HISTORY_PREFIX))) for score, text, prefix in found]
    return sorted((item for item in scored if item[0] > 0), key=lambda item: -item[0])


def _quoted(chosen: Sequence[Sentence]) -> list[str]:
    """The sentences of one passage, its [n] after the last."""
    texts = [sentence.text for sentence in chosen]
    marker = chosen[-1].block.marker if chosen[-1].block else 0
    texts[-1] = f"{texts[-1]} [{marker}]"
    return texts


def compose(request: AnswerRequest) -> list[str]:
    """The answer as sentences; the last one of a quoted passage carries its [n]."""
    question = Question.of(request)
    candidates = document_sentences(request)
    ranked = rank_document_sentences(request, question, candidates)
    if question.about_the_past or not ranked:
        remembered = _memory_sentences(request, question)
        if remembered and (not ranked or remembered[0][0] >= ranked[0].score):
            return [remembered[0][1]]
    if ranked:
        best = ranked[0]
        chosen = _continuation(best, candidates)
        texts = _quoted(chosen)
        if question.comparing:
            # "how does that compare to Q2?" needs the other side too: the best sentence of another passage
            other = next((c for c in ranked[1:] if c.block is not best.block), None)
            if other is not None and other.score >= COMPARISON_CUTOFF * best.score:
                texts += _quoted([other])
            return texts
        # close runners-up are quoted too while the answer stays short: when the question matches
        # more than one place, the user sees each, cited
        length = sum(len(c.text.split()) for c in chosen)
        used = {c.order for c in chosen}
        for runner_up in ranked[1:]:
            if len(texts) >= MAX_PARTS or runner_up.score < RUNNER_UP_CUTOFF * best.score:
                break
            size = len(runner_up.text.split())
            if runner_up.order in used or length + size > ANSWER_WORDS:
                continue
            texts += _quoted([runner_up])
            used.add(runner_up.order)
            length += size
        return texts
    top = request.documents[0] if request.documents else None
    if top is not None and top.score >= SEMANTIC_FALLBACK_SCORE:
        opening = block_sentences(top)[:2]
        if opening:
            passage = shorten(" ".join(sentence.text for sentence in opening), MAX_SENTENCE_CHARS)
            return [f"{CLOSEST_PREFIX}{passage} [{top.marker}]"]
    return [NOT_FOUND_ANSWER]


class ExtractiveAnswerer:
    model = "extractive"

    async def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        for index, piece in enumerate(compose(request)):
            yield piece if index == 0 else f" {piece}"

    async def close(self) -> None:
        return None
