"""Conversations and chat turns in Postgres: the source of truth for what was said.

Every query that serves a user names the user, so another user's conversation is simply not
found. A turn and its conversation's counters are written in one transaction; a new
conversation's row is created in that same transaction, so a failed answer leaves nothing behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from services.chat.text import normalise_space, shorten
from services.runtime.ids import parse_uuid
from services.runtime.pagination import PageCursor

TITLE_CHARS = 80
CONVERSATION_COLUMNS = "id, user_id, title, turn_count, created_at, updated_at"


def _reachable(param: str) -> str:
    """The condition "a caller confined to the API key `param` started it, or the caller is not confined"."""
    return f"({param}::text IS NULL OR api_key_id = {param})"


@dataclass(frozen=True)
class Owner:
    """Whose conversations: a user's, or only those one of their API keys started (Identity.confined_key_id)."""

    user_id: str
    key_id: str | None = None
TURN_COLUMNS = """id, conversation_id, user_id, seq, query, standalone_query, answer, sources, context,
                  chat_context_used, model, retrieval_ms, answer_ms, storage_ms, total_ms, vector_id,
                  memory_indexed_at, created_at, history_turn_ids"""


def derive_title(query: str) -> str:
    """A conversation's title: its first question, on one line, cut at a word boundary."""
    return shorten(normalise_space(query), TITLE_CHARS) or "New conversation"


@dataclass
class NewTurn:
    id: uuid.UUID
    conversation_id: uuid.UUID
    user_id: str
    query: str
    standalone_query: str
    answer: str
    sources: list[dict[str, object]]
    context: list[dict[str, object]]
    chat_context_used: bool
    model: str
    retrieval_ms: float
    answer_ms: float
    storage_ms: float = 0.0
    total_ms: float = 0.0
    history_turn_ids: list[uuid.UUID] = field(default_factory=list)
    api_key_id: str | None = None  # the confined API key that starts the conversation


async def get(pool: asyncpg.Pool, owner: Owner, conversation_id: str) -> asyncpg.Record | None:
    ident = parse_uuid(conversation_id)
    if ident is None:
        return None
    return await pool.fetchrow(
        f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1 AND user_id = $2 AND {_reachable('$3')}",
        ident, owner.user_id, owner.key_id)


async def recent_turns(pool: asyncpg.Pool, user_id: str, conversation_id: uuid.UUID,
                       limit: int) -> list[asyncpg.Record]:
    """The conversation's last `limit` turns, newest first."""
    return list(await pool.fetch(
        """SELECT id, query, standalone_query, answer FROM chat_turns
           WHERE conversation_id = $1 AND user_id = $2 ORDER BY seq DESC LIMIT $3""",
        conversation_id, user_id, limit))


async def store_turn(conn: asyncpg.Connection, turn: NewTurn, *, new_conversation: bool,
                     before_insert: Callable[[NewTurn], None] | None = None) -> asyncpg.Record | None:
    """Insert the turn (and, for a new conversation, the conversation) in one transaction.

    Returns the stored row, or None when the conversation was deleted meanwhile. Concurrent
    turns of one conversation serialise on the conversation row, which hands out the seq.
    `before_insert` may fill in last values (timings) just before the turn's INSERT.
    """
    async with conn.transaction():
        if new_conversation:
            seq = await conn.fetchval(
                """INSERT INTO conversations (id, user_id, title, turn_count, api_key_id) VALUES ($1, $2, $3, 1, $4)
                   RETURNING turn_count""", turn.conversation_id, turn.user_id, derive_title(turn.query),
                turn.api_key_id)
        else:
            seq = await conn.fetchval(
                """UPDATE conversations SET turn_count = turn_count + 1, updated_at = now()
                   WHERE id = $1 AND user_id = $2 RETURNING turn_count""", turn.conversation_id, turn.user_id)
            if seq is None:
                return None
        if before_insert is not None:
            before_insert(turn)
        return await conn.fetchrow(
            f"""INSERT INTO chat_turns (id, conversation_id, user_id, seq, query, standalone_query, answer, sources,
                       context, chat_context_used, model, retrieval_ms, answer_ms, storage_ms, total_ms,
                       history_turn_ids)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11, $12, $13, $14, $15, $16)
                RETURNING {TURN_COLUMNS}""",
            turn.id, turn.conversation_id, turn.user_id, seq, turn.query, turn.standalone_query, turn.answer,
            json.dumps(turn.sources), json.dumps(turn.context), turn.chat_context_used, turn.model,
            turn.retrieval_ms, turn.answer_ms, turn.storage_ms, turn.total_ms, turn.history_turn_ids)


async def list_page(pool: asyncpg.Pool, owner: Owner, page_size: int,
                    cursor: PageCursor | None) -> tuple[list[asyncpg.Record], PageCursor | None]:
    """Newest (most recently active) first, keyset-paginated on (updated_at, id)."""
    if cursor is None:
        rows = await pool.fetch(
            f"""SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE user_id = $1 AND {_reachable('$2')}
                ORDER BY updated_at DESC, id DESC LIMIT $3""", owner.user_id, owner.key_id, page_size + 1)
    else:
        rows = await pool.fetch(
            f"""SELECT {CONVERSATION_COLUMNS} FROM conversations
                WHERE user_id = $1 AND {_reachable('$2')} AND (updated_at, id) < ($3, $4)
                ORDER BY updated_at DESC, id DESC LIMIT $5""", owner.user_id, owner.key_id, cursor.at, cursor.id,
            page_size + 1)
    next_cursor = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_cursor = PageCursor(rows[-1]["updated_at"], rows[-1]["id"])
    return list(rows), next_cursor


async def turns(pool: asyncpg.Pool, user_id: str, conversation_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        f"SELECT {TURN_COLUMNS} FROM chat_turns WHERE conversation_id = $1 AND user_id = $2 ORDER BY seq",
        conversation_id, user_id))


async def delete(pool: asyncpg.Pool, user_id: str, conversation_id: uuid.UUID) -> bool:
    """Delete the conversation; its turns go with it (ON DELETE CASCADE). Copies of its turns in the
    retrieval context kept by other turns of the user (the explain view) are removed too."""
    async with pool.acquire() as conn, conn.transaction():
        result = await conn.execute("DELETE FROM conversations WHERE id = $1 AND user_id = $2",
                                    conversation_id, user_id)
        if not result.endswith(" 1"):
            return False
        await conn.execute(
            """UPDATE chat_turns SET context = (
                   SELECT coalesce(jsonb_agg(item ORDER BY position), '[]'::jsonb)
                   FROM jsonb_array_elements(context) WITH ORDINALITY AS items(item, position)
                   WHERE item -> 'chat_turn' ->> 'conversation_id' IS DISTINCT FROM $2)
               WHERE user_id = $1
                 AND context @> jsonb_build_array(
                         jsonb_build_object('chat_turn', jsonb_build_object('conversation_id', $2::text)))""",
            user_id, str(conversation_id))
    return True


# the memory worker acts on turn ids, not on behalf of a caller ----------------------------------

async def turn_to_index(pool: asyncpg.Pool, turn_id: str) -> asyncpg.Record | None:
    ident = parse_uuid(turn_id)
    if ident is None:
        return None
    return await pool.fetchrow(
        """SELECT id, conversation_id, user_id, query, standalone_query, answer, created_at, vector_id,
                  memory_indexed_at, memory_refined_at
           FROM chat_turns WHERE id = $1""", ident)


async def mark_indexed(pool: asyncpg.Pool, turn_id: uuid.UUID, vector_id: str, *, refined: bool) -> bool:
    """Record the memory vector (`refined`: of the full text, else of the question); False when the turn
    was deleted meanwhile."""
    updated = await pool.fetchval(
        """UPDATE chat_turns SET vector_id = $2, memory_indexed_at = coalesce(memory_indexed_at, now()),
                  memory_refined_at = CASE WHEN $3 THEN now() ELSE memory_refined_at END
           WHERE id = $1 RETURNING 1""", turn_id, vector_id, refined)
    return updated is not None


async def take_unindexed_for_sweep(conn: asyncpg.Connection, stale_after: float, max_sweeps: int,
                                   limit: int = 500) -> list[uuid.UUID]:
    """Turns whose memory is still unindexed and due for another try, oldest first; counts the try.

    A turn is due once stale_after × 2^sweeps seconds passed since it was stored, and never after
    `max_sweeps` tries.
    """
    rows = await conn.fetch(
        """UPDATE chat_turns SET memory_sweeps = memory_sweeps + 1
           WHERE id IN (SELECT id FROM chat_turns WHERE memory_indexed_at IS NULL
                        AND memory_sweeps < $2
                        AND created_at < now() - make_interval(secs => $1 * (1 << memory_sweeps))
                        ORDER BY created_at LIMIT $3)
           RETURNING id""",
        stale_after, max_sweeps, limit)
    return [row["id"] for row in rows]


async def forget_all_memory(pool: asyncpg.Pool) -> list[uuid.UUID]:
    """Every turn of every user loses its memory vector, to be embedded again (`docent reindex`); their ids."""
    rows = await pool.fetch(
        """UPDATE chat_turns SET vector_id = NULL, memory_indexed_at = NULL, memory_refined_at = NULL,
                  memory_sweeps = 0
           RETURNING id""")
    return [row["id"] for row in rows]


async def count_unindexed(db: asyncpg.Connection | asyncpg.Pool) -> int:
    """Turns whose memory is not written yet (`docent queue`)."""
    return int(await db.fetchval("SELECT count(*) FROM chat_turns WHERE memory_indexed_at IS NULL"))


async def take_unrefined_for_sweep(conn: asyncpg.Connection, stale_after: float, max_sweeps: int,
                                   limit: int) -> list[uuid.UUID]:
    """Turns searchable by their question's vector only, indexed at least `stale_after` seconds ago,
    oldest first; counts the try (a turn whose full text never embeds is given up after `max_sweeps`)."""
    rows = await conn.fetch(
        """UPDATE chat_turns SET memory_sweeps = memory_sweeps + 1
           WHERE id IN (SELECT id FROM chat_turns
                        WHERE memory_indexed_at < now() - make_interval(secs => $1)
                          AND memory_refined_at IS NULL AND memory_sweeps < $2
                        ORDER BY created_at LIMIT $3)
           RETURNING id""",
        stale_after, max_sweeps, limit)
    return [row["id"] for row in rows]


async def memory_lag_quantiles(db: asyncpg.Connection | asyncpg.Pool, window_seconds: float,
                               max_sweeps: int) -> dict[str, float]:
    """Turn stored → memory searchable, in seconds, over the turns indexed in the last `window_seconds`
    (p50, p99), and the age of the oldest turn still waiting (0 when none is; turns the sweep gave up on,
    after `max_sweeps` tries, do not count)."""
    row = await db.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
                  (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM chat_turns
                   WHERE memory_indexed_at IS NULL AND memory_sweeps < $2) AS oldest_waiting
           FROM (SELECT extract(epoch FROM memory_indexed_at - created_at) AS lag FROM chat_turns
                 WHERE memory_indexed_at > now() - make_interval(secs => $1)) AS recent""", window_seconds, max_sweeps)
    return {"p50": float(row["p50"] or 0.0), "p99": float(row["p99"] or 0.0),
            "oldest_waiting": float(row["oldest_waiting"] or 0.0)}
