"""The sweeper against real Postgres and Redis: lost messages, dead workers, unindexed chat turns."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.chat.memory_sweep import MAX_MEMORY_SWEEPS
from services.ingest.collections import ensure_personal
from services.runtime import db, sweeps
from services.runtime.names import PROCESS_DOCUMENT
from services.runtime.queue import INGEST_QUEUE, Enqueuer, build_message, pending_arguments, queue_stats
from services.sweeper import SWEEP_PASSES
from tests.conftest import create_database, make_settings


async def sweep_once(settings, pool, enqueuer) -> dict[str, int]:
    """One round of the sweeper process: the documents' pass, then chat's."""
    return await sweeps.sweep_once(SWEEP_PASSES, settings, pool, enqueuer)


@pytest.fixture
async def swept(backing):
    url = await create_database(backing.database_url)
    pool = await db.create_pool(url, max_size=2)
    # a Redis database of its own: queue counts are asserted, other tests' workers use db 0
    redis_url = backing.redis_url.replace("db=0", "db=7")
    assert redis_url != backing.redis_url
    enqueuer = Enqueuer(redis_url)
    enqueuer.broker.flush_all()
    settings = make_settings(backing, database_url=url, redis_url=redis_url, lease_seconds=5,
                             sweep_interval_seconds=1, max_attempts=3)
    try:
        yield settings, pool, enqueuer
    finally:
        enqueuer.broker.flush_all()
        enqueuer.close()
        await pool.close()


async def add_document(pool, status: str, *, attempts: int = 0, lease_age: str | None = None,
                       enqueued_age: str | None = None) -> uuid.UUID:
    ident = uuid.uuid4()
    collection_id = await ensure_personal(pool, "u")
    await pool.execute(
        """INSERT INTO documents (id, user_id, collection_id, filename, mime_type, file_size, sha256, status, attempts,
                                  lease_until, enqueued_at)
           VALUES ($1, 'u', $7, 'f.txt', 'text/plain', 1, $2, $3, $4,
                   CASE WHEN $5::text IS NULL THEN NULL ELSE now() - $5::interval END,
                   CASE WHEN $6::text IS NULL THEN NULL ELSE now() - $6::interval END)""",
        ident, ident.hex, status, attempts, lease_age, enqueued_age, collection_id)
    return ident


async def status_of(pool, ident: uuid.UUID) -> tuple[str, str | None]:
    row = await pool.fetchrow("SELECT status, error FROM documents WHERE id = $1", ident)
    return row["status"], row["error"]


async def test_expired_leases_are_recovered_or_failed_and_lost_messages_requeued(swept) -> None:
    settings, pool, enqueuer = swept
    dead_worker = await add_document(pool, "processing", attempts=1, lease_age="1 minute")
    out_of_attempts = await add_document(pool, "processing", attempts=3, lease_age="1 minute")
    alive = await add_document(pool, "processing", attempts=1, lease_age="-1 minute")  # lease still valid
    lost_message = await add_document(pool, "pending", enqueued_age="1 minute")
    never_enqueued = await add_document(pool, "pending")
    requeued = (dead_worker, lost_message, never_enqueued)
    just_enqueued = await add_document(pool, "pending", enqueued_age="0 seconds")

    counts = await sweep_once(settings, pool, enqueuer)

    assert counts["recovered"] == 1 and counts["failed"] == 1
    assert await status_of(pool, dead_worker) == ("pending", "recovered after a lost worker")
    status, error = await status_of(pool, out_of_attempts)
    assert status == "failed" and "after 3 attempts" in error
    assert (await status_of(pool, alive))[0] == "processing"
    # re-enqueued: the recovered one, the lost message and the never-enqueued one; not the fresh one
    assert counts["requeued"] == 3
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE id = ANY($1) AND task_id IS NOT NULL",
                               list(requeued)) == 3
    assert queue_stats(enqueuer.broker)["ingest"]["waiting"] == 3
    assert await pool.fetchval("SELECT enqueued_at > now() - interval '5 seconds' FROM documents WHERE id = $1",
                               just_enqueued)
    # a second pass right away has nothing to do
    assert await sweep_once(settings, pool, enqueuer) == {"requeued": 0, "recovered": 0, "failed": 0, "turns": 0,
                                                       "turns_to_refine": 0}


async def test_unindexed_chat_turns_are_requeued_with_backoff_then_given_up(swept) -> None:
    settings, pool, enqueuer = swept
    conversation = uuid.uuid4()
    await pool.execute("INSERT INTO conversations (id, user_id, title) VALUES ($1, 'u', 't')", conversation)
    turn = uuid.uuid4()
    await pool.execute(
        """INSERT INTO chat_turns (id, conversation_id, user_id, seq, query, standalone_query, answer, model,
                                   created_at)
           VALUES ($1, $2, 'u', 1, 'q', 'q', 'a', 'extractive', now() - interval '1 hour')""", turn, conversation)
    fresh = uuid.uuid4()
    await pool.execute(
        """INSERT INTO chat_turns (id, conversation_id, user_id, seq, query, standalone_query, answer, model)
           VALUES ($1, $2, 'u', 2, 'q', 'q', 'a', 'extractive')""", fresh, conversation)

    assert (await sweep_once(settings, pool, enqueuer))["turns"] == 1  # the fresh one still has its message
    assert queue_stats(enqueuer.broker)["memory"]["waiting"] == 1
    # an hour old: backoff 5 s × 2^n stays below an hour until n = 10, so the cap decides
    for _ in range(MAX_MEMORY_SWEEPS + 2):
        await sweep_once(settings, pool, enqueuer)
    assert await pool.fetchval("SELECT memory_sweeps FROM chat_turns WHERE id = $1", turn) == MAX_MEMORY_SWEEPS
    assert queue_stats(enqueuer.broker)["memory"]["waiting"] == MAX_MEMORY_SWEEPS


async def test_a_backlog_keeps_one_message_per_document(swept) -> None:
    """300 documents waiting behind a busy worker are not re-enqueued on every sweep; only a lost message is."""
    settings, pool, enqueuer = swept
    for index in range(300):
        ident = await add_document(pool, "pending", enqueued_age="1 minute")
        message = build_message(INGEST_QUEUE, PROCESS_DOCUMENT, str(ident))
        # one waits for a retry in the delayed queue: it is not lost either
        await asyncio.to_thread(enqueuer.broker.enqueue, message, delay=60_000 if index == 0 else None)
        await pool.execute("UPDATE documents SET task_id = $2 WHERE id = $1", ident, message.message_id)
    lost = await add_document(pool, "pending", enqueued_age="1 minute")  # Redis forgot its message

    first = await sweep_once(settings, pool, enqueuer)
    again = [await sweep_once(settings, pool, enqueuer) for _ in range(3)]

    assert first["requeued"] == 1 and all(counts["requeued"] == 0 for counts in again)
    stats = queue_stats(enqueuer.broker)["ingest"]
    assert (stats["waiting"], stats["delayed"]) == (300, 1)  # 299 + the lost one's new message; 1 delayed
    assert str(lost) in await asyncio.to_thread(pending_arguments, enqueuer.broker, INGEST_QUEUE, PROCESS_DOCUMENT)


async def test_each_pass_has_its_own_lock(swept) -> None:
    """A pass another sweeper is running is skipped; the other passes still run."""
    from services.ingest.sweeper import SWEEP_LOCK_KEY

    settings, pool, enqueuer = swept
    await add_document(pool, "pending")
    async with pool.acquire() as other_sweeper:
        await other_sweeper.execute("SELECT pg_advisory_lock($1)", SWEEP_LOCK_KEY)
        try:
            assert await sweep_once(settings, pool, enqueuer) == {"turns": 0, "turns_to_refine": 0}
        finally:
            await other_sweeper.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK_KEY)
    assert (await sweep_once(settings, pool, enqueuer))["requeued"] == 1


async def test_the_sweeper_refuses_to_start_on_a_schema_behind_its_passes(backing) -> None:
    url = await create_database(backing.database_url, migrated=False)
    await db.migrate(url, ["ingest"])  # chat's tables are missing
    settings = make_settings(backing, database_url=url)
    with pytest.raises(SystemExit, match="docent: chat: the database schema is behind"):
        await sweeps.sweep_forever(SWEEP_PASSES, settings, asyncio.Event())
