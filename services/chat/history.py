"""A conversation's recent turns, newest kept first, bounded by a token budget.

Tokens are counted with the embedding model's word-piece tokenizer when it is installed (a close
enough estimate for any LLM's prompt budget), else estimated at four characters per token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger("docent.chat.history")

# how many turns are read from Postgres before the budget is applied
MAX_TURNS_LOADED = 20
# a turn whose answer had to be cut to fit keeps at least this many characters of it
MIN_ANSWER_CHARS = 80


@dataclass(frozen=True)
class HistoryTurn:
    id: str
    query: str
    standalone_query: str
    answer: str


def _estimate(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def token_counter() -> Callable[[str], int]:
    try:
        from services.runtime.embeddings import Tokenizer

        tokenizer = Tokenizer.shared()
    except Exception as error:  # the tokenizer package is optional for this purpose
        log.info("history_token_estimate", reason=type(error).__name__)
        return _estimate
    return tokenizer.count


def within_budget(turns_newest_first: Sequence[HistoryTurn], budget: int,
                  count: Callable[[str], int]) -> list[HistoryTurn]:
    """The newest turns whose question + answer fit in `budget` tokens, returned oldest first.

    The newest turn is always kept (a follow-up needs it), with its answer shortened if it alone
    is over the budget; a budget of 0 turns history off.
    """
    if budget <= 0 or not turns_newest_first:
        return []
    kept: list[HistoryTurn] = []
    used = 0
    for turn in turns_newest_first:
        cost = count(turn.query) + count(turn.answer)
        if used + cost > budget:
            if not kept:
                kept.append(_shortened(turn, budget, count))
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept


def _shortened(turn: HistoryTurn, budget: int, count: Callable[[str], int]) -> HistoryTurn:
    room = max(budget - count(turn.query), 0)
    answer_tokens = max(count(turn.answer), 1)
    chars = max(int(len(turn.answer) * room / answer_tokens), MIN_ANSWER_CHARS)
    answer = turn.answer if len(turn.answer) <= chars else turn.answer[:chars].rsplit(" ", 1)[0] + " …"
    return HistoryTurn(turn.id, turn.query, turn.standalone_query, answer)
