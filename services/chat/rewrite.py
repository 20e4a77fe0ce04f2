"""The standalone question sent to retrieval, so that follow-ups such as "and the profit?" work.

Without an LLM a deterministic rule applies: a message that continues the previous question —
it opens with a connective ("and …", "what about …"), refers back ("that", "it", "compare"), or
is a bare term or two ("profit?") — gets the previous question's key terms appended to its own
("How does that compare to Q2?" after "What is our Q3 revenue?" → "Q2 Q3 revenue"). Any other
message stands alone. The previous question is the previous turn's standalone query, so a chain
of follow-ups keeps its subject. With an LLM, a short rewrite prompt does this instead; an
unusable rewrite (empty, or far longer than a question) falls back to the rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from services.chat.answer_llm import LLMClient
from services.chat.history import HistoryTurn
from services.chat.text import FOLLOW_UP_OPENERS, REFERRING_WORDS, display_terms, fold, key_terms, shorten, words

log = structlog.get_logger("docent.chat.rewrite")

MAX_CARRIED_TERMS = 8
MAX_STANDALONE_CHARS = 1000
REWRITE_MAX_TOKENS = 96
REWRITE_TURNS = 3
REWRITE_ANSWER_CHARS = 400

REWRITE_PROMPT = (
    "You rewrite a user's latest chat message into a standalone search query for their documents. "
    "Use the conversation only to resolve what the message refers to (\"it\", \"that\", \"and the profit?\"). "
    "Keep names, numbers and key terms. If the message already stands alone, return it unchanged. "
    "Reply with the query only: no quotes, no explanation."
)


def is_follow_up(query: str) -> bool:
    lowered = " ".join(words(query))
    if not lowered:
        return False
    if any(lowered == opener or lowered.startswith(opener + " ") for opener in FOLLOW_UP_OPENERS):
        return True
    message_words = lowered.split()
    if any(word in REFERRING_WORDS for word in message_words):
        return True
    return len(key_terms(query)) <= 1 and len(message_words) <= 4


def rule_rewrite(query: str, history: Sequence[HistoryTurn]) -> str:
    """The deterministic standalone question (see the module docstring)."""
    if not history or not is_follow_up(query):
        return query
    previous = history[-1].standalone_query or history[-1].query
    own = display_terms(query)
    own_keys = {fold(term.lower()) for term in own}
    carried = [term for term in display_terms(previous) if fold(term.lower()) not in own_keys][:MAX_CARRIED_TERMS]
    if not carried:
        return query
    return " ".join([*own, *carried])


class Rewriter:
    """Builds the standalone question; uses the LLM when one is configured."""

    def __init__(self, llm: LLMClient | None = None) -> None:
        self.llm = llm

    async def standalone(self, query: str, history: Sequence[HistoryTurn]) -> str:
        if not history:
            return query
        if self.llm is None:
            return rule_rewrite(query, history)
        rewritten = _clean(await self.llm.complete(
            _rewrite_messages(query, history), temperature=0, max_tokens=REWRITE_MAX_TOKENS))
        if not rewritten or len(rewritten) > max(4 * len(query), 300):
            log.info("rewrite_unusable", chars=len(rewritten))
            return rule_rewrite(query, history)
        return rewritten


def _rewrite_messages(query: str, history: Sequence[HistoryTurn]) -> list[dict[str, str]]:
    lines = []
    for turn in history[-REWRITE_TURNS:]:
        lines.append(f"User: {turn.query}")
        lines.append(f"Assistant: {shorten(turn.answer, REWRITE_ANSWER_CHARS)}")
    conversation = "\n".join(lines)
    prompt = f"Conversation:\n{conversation}\n\nLatest message: {query}\n\nStandalone query:"
    return [{"role": "system", "content": REWRITE_PROMPT}, {"role": "user", "content": prompt}]


def _clean(text: str) -> str:
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    for prefix in ("standalone query:", "query:", "search query:"):
        if line.lower().startswith(prefix):
            line = line[len(prefix):].strip()
    return line.strip("\"'“”` ")[:MAX_STANDALONE_CHARS]
