"""The document state machine: every status, and every change of a document's status or lease, with its SQL.

    claim                   pending, or processing with an expired lease → processing
    record_progress         processing → processing, the lease renewed
    complete                processing → completed
    release                 processing → pending (a transient failure: the message is retried)
    fail                    pending or processing → failed
    recover_expired_leases  processing with an expired lease → pending, or failed after max attempts
    requeue_all             anything but failed → pending (`docent reindex`)

A worker owns a `processing` document until `lease_until`; `record_progress` renews the lease, and
the sweeper's `recover_expired_leases` takes a document back from a worker that died. Every update
is announced on `document_events` (the documents_notify trigger), which watchers follow.
Transitions act on ids (the callers parse them) and change nothing when the document is not in a
state they start from: a late or duplicate caller is told so by their result.
"""

from __future__ import annotations

import uuid
from enum import StrEnum

import asyncpg


class Status(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED})
# the sweeper's reason for a document whose worker kept dying (beside the parser's and pipeline's reasons)
WORKER_LOST = "WORKER_LOST"
# what a document that reached a terminal state is handed on with: its webhook and its vector cleanup
FINISHED_COLUMNS = "id, user_id, filename, status, error, error_reason, page_count, chunk_count, webhook_url"

Executor = asyncpg.Connection | asyncpg.Pool


# the worker ---------------------------------------------------------------------------------------

async def claim(db: Executor, document_id: uuid.UUID, lease_seconds: int) -> asyncpg.Record | None:
    """pending (or processing with an expired lease) → processing, leased to the caller for `lease_seconds`.

    Counts an attempt and resets the progress of an earlier one. None when it is not claimable: done,
    deleted, or another worker's lease is live. The row has id, user_id, filename, mime_type, attempts.
    """
    return await db.fetchrow(
        """UPDATE documents
           SET status = 'processing', stage = 'parsing', attempts = attempts + 1, error = NULL, error_reason = NULL,
               pages_done = 0, pages_total = 0, chunks_done = 0, chunks_total = 0,
               lease_until = now() + make_interval(secs => $2), updated_at = now()
           WHERE id = $1 AND (status = 'pending' OR (status = 'processing' AND lease_until < now()))
           RETURNING id, user_id, filename, mime_type, attempts""",
        document_id, lease_seconds)


async def record_progress(db: Executor, document_id: uuid.UUID, lease_seconds: int,
                          values: dict[str, object]) -> bool:
    """Write progress columns (stage, pages_*, chunks_*) and renew the lease.

    False when the document is no longer processing for us: deleted, or taken over after our lease expired.
    """
    columns = list(values)
    assignments = ", ".join(f"{column} = ${index + 3}" for index, column in enumerate(columns))
    renewed = await db.fetchval(
        f"""UPDATE documents SET {assignments}, updated_at = now(),
                   lease_until = now() + make_interval(secs => $2)
            WHERE id = $1 AND status = 'processing' RETURNING 1""",
        document_id, lease_seconds, *values.values())
    return renewed is not None


async def complete(db: Executor, document_id: uuid.UUID, *, chunk_count: int,
                   page_count: int) -> asyncpg.Record | None:
    """processing → completed, with the final counts; None when the document is no longer processing."""
    return await db.fetchrow(
        f"""UPDATE documents SET status = 'completed', stage = 'completed', error = NULL, error_reason = NULL,
                   lease_until = NULL,
                   chunks_done = $2, chunk_count = $2, page_count = $3, pages_done = $3, indexed_at = now(),
                   updated_at = now()
            WHERE id = $1 AND status = 'processing' RETURNING {FINISHED_COLUMNS}""",
        document_id, chunk_count, page_count)


async def release(db: Executor, document_id: uuid.UUID, reason: str) -> None:
    """processing → pending after a transient failure, for the message's retry (`error` says why)."""
    await db.execute(
        """UPDATE documents SET status = 'pending', stage = 'queued', lease_until = NULL, error = $2,
                  enqueued_at = now(), updated_at = now()
           WHERE id = $1 AND status = 'processing'""", document_id, f"retrying: {reason}")


async def fail(db: Executor, document_id: uuid.UUID, message: str, reason: str) -> asyncpg.Record | None:
    """pending or processing → failed, with a message and a stable reason code; None when already terminal."""
    return await db.fetchrow(
        f"""UPDATE documents SET status = 'failed', stage = 'failed', error = $2, error_reason = $3,
                   lease_until = NULL, updated_at = now()
            WHERE id = $1 AND status IN ('pending', 'processing') RETURNING {FINISHED_COLUMNS}""",
        document_id, message[:1000], reason)


# enqueueing and the sweeper -----------------------------------------------------------------------

async def mark_enqueued(db: Executor, document_id: uuid.UUID, task_id: str) -> None:
    """A message for the document is in the broker now (the sweeper leaves it alone for a while)."""
    await db.execute("UPDATE documents SET task_id = $2, enqueued_at = now(), updated_at = now() WHERE id = $1",
                     document_id, task_id)


async def recover_expired_leases(db: Executor, max_attempts: int) -> list[asyncpg.Record]:
    """processing with an expired lease (its worker died) → pending, or failed (WORKER_LOST) once it used
    `max_attempts`. Returns (id, status) of each, with its new status."""
    return list(await db.fetch(
        """UPDATE documents
           SET status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END,
               stage = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END,
               error = CASE WHEN attempts >= $1
                            THEN 'processing did not finish after ' || attempts || ' attempts (worker lost)'
                            ELSE 'recovered after a lost worker' END,
               error_reason = CASE WHEN attempts >= $1 THEN $2 END,
               lease_until = NULL, enqueued_at = NULL, updated_at = now()
           WHERE status = 'processing' AND lease_until < now()
           RETURNING id, status""", max_attempts, WORKER_LOST))


async def pending_not_enqueued_since(db: Executor, seconds: float) -> list[uuid.UUID]:
    """Pending documents never enqueued, or last enqueued more than `seconds` ago."""
    rows = await db.fetch(
        """SELECT id FROM documents
           WHERE status = 'pending'
             AND (enqueued_at IS NULL OR enqueued_at < now() - make_interval(secs => $1))""", seconds)
    return [row["id"] for row in rows]


async def any_processing(db: Executor) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM documents WHERE status = 'processing')"))


async def requeue_all(db: Executor) -> list[uuid.UUID]:
    """Every document that did not fail → pending with a clean slate (attempts, progress, index time), to be
    processed again from its stored file; returns their ids."""
    rows = await db.fetch(
        """UPDATE documents SET status = 'pending', stage = 'queued', error = NULL, attempts = 0,
                  pages_done = 0, chunks_done = 0, lease_until = NULL, enqueued_at = NULL,
                  indexed_at = NULL, updated_at = now()
           WHERE status <> 'failed' RETURNING id""")
    return [row["id"] for row in rows]


async def mark_webhook_sent(db: Executor, document_id: uuid.UUID) -> None:
    await db.execute("UPDATE documents SET webhook_sent_at = now() WHERE id = $1", document_id)


# what operators and gauges read -------------------------------------------------------------------

async def count_by_status(db: Executor) -> dict[Status, int]:
    """Every status with its number of documents (0 for none)."""
    counts = dict.fromkeys(Status, 0)
    for status, total in await db.fetch("SELECT status, count(*) FROM documents GROUP BY status"):
        counts[Status(status)] = total
    return counts


async def processing_now(db: Executor, limit: int) -> list[asyncpg.Record]:
    """Documents being processed, most recently active first, with the seconds left on their lease."""
    return list(await db.fetch(
        """SELECT id, filename, stage, pages_done, pages_total, chunks_done, chunks_total, attempts,
                  greatest(0, extract(epoch FROM lease_until - now()))::int AS lease_left
           FROM documents WHERE status = 'processing' ORDER BY updated_at DESC LIMIT $1""", limit))


async def recently_failed(db: Executor, limit: int) -> list[asyncpg.Record]:
    return list(await db.fetch(
        """SELECT id, filename, error, error_reason, updated_at FROM documents WHERE status = 'failed'
           ORDER BY updated_at DESC LIMIT $1""", limit))
