"""The document state machine: every status, and every change of a document's status or lease, with its SQL.

    claim                   pending, or processing with an expired lease → processing
    record_progress         processing → processing, the lease renewed
    complete                processing → completed
    release                 processing → pending (a transient failure: the message is retried)
    fail                    pending or processing → failed
    recover_expired_leases  processing with an expired lease → pending, or failed after max attempts
    requeue_all             anything but failed → pending (`docent reindex`)
    start_replacement       completed or failed → pending, with a new pending version (ReplaceDocument)

Versions: the row describes its active version (`version`: file, counts, index time); a replacement sets
`pending_version`, and the status, stage, progress, attempts and lease then describe that version's
processing, through the same transitions as an upload (the sweeper and retries need nothing else).
`complete` of a replacement makes the pending version the active one; `fail` of a replacement records
the failure on the version (document_versions) and puts the document back to its active version's
status and error, so the active version stays in place.

A worker owns a `processing` document until `lease_until`; `record_progress` renews the lease, and
the sweeper's `recover_expired_leases` takes a document back from a worker that died. Every update
is announced on `document_events` (the documents_notify trigger), which watchers follow.
Transitions act on ids (the callers parse them) and change nothing when the document is not in a
state they start from: a late or duplicate caller is told so by their result.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
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
# the version a document's processing works on: a replacement's, else the active one (an upload, a reindex)
WORK_VERSION = "coalesce(pending_version, version)"

Executor = asyncpg.Connection | asyncpg.Pool


# the worker ---------------------------------------------------------------------------------------

async def claim(db: Executor, document_id: uuid.UUID, lease_seconds: int) -> asyncpg.Record | None:
    """pending (or processing with an expired lease) → processing, leased to the caller for `lease_seconds`.

    Counts an attempt and resets the progress of an earlier one. None when it is not claimable: done,
    deleted, or another worker's lease is live. The row has id, user_id, attempts, and of the version to
    process (the pending one, else the active one): version, filename, mime_type; `staged` is True for a
    replacement (its chunks are written invisible until the switch).
    """
    return await db.fetchrow(
        f"""UPDATE documents
           SET status = 'processing', stage = 'parsing', attempts = attempts + 1, error = NULL, error_reason = NULL,
               pages_done = 0, pages_total = 0, chunks_done = 0, chunks_total = 0,
               lease_until = now() + make_interval(secs => $2), updated_at = now()
           WHERE id = $1 AND (status = 'pending' OR (status = 'processing' AND lease_until < now()))
           RETURNING id, user_id, collection_id, attempts, {WORK_VERSION} AS version,
                     pending_version IS NOT NULL AS staged,
                     coalesce((SELECT v.filename FROM document_versions v
                               WHERE v.document_id = documents.id AND v.version = documents.pending_version),
                              filename) AS filename,
                     coalesce((SELECT v.mime_type FROM document_versions v
                               WHERE v.document_id = documents.id AND v.version = documents.pending_version),
                              mime_type) AS mime_type""",
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
    """processing → completed, with the final counts; None when the document is no longer processing.

    The processed version becomes the active one: for a replacement, the row takes its file's name, type,
    size and hash, and `pending_version` is cleared (in the same statement: readers see one or the other).
    """
    return await db.fetchrow(
        f"""WITH target AS (
                SELECT id AS target_id, {WORK_VERSION} AS done_version FROM documents
                WHERE id = $1 AND status = 'processing' FOR UPDATE),
            done AS (
                UPDATE document_versions v SET status = 'completed', error = NULL, error_reason = NULL,
                       indexed_at = now()
                FROM target WHERE v.document_id = target.target_id AND v.version = target.done_version
                RETURNING v.version AS done_version_number, v.filename AS v_filename, v.mime_type AS v_mime_type,
                          v.file_size AS v_file_size, v.sha256 AS v_sha256)
            UPDATE documents SET status = 'completed', stage = 'completed', error = NULL, error_reason = NULL,
                   lease_until = NULL,
                   chunks_done = $2, chunk_count = $2, page_count = $3, pages_done = $3, indexed_at = now(),
                   updated_at = now(), version = done_version_number, pending_version = NULL,
                   filename = v_filename, mime_type = v_mime_type, file_size = v_file_size, sha256 = v_sha256
            FROM target, done WHERE id = target.target_id RETURNING {FINISHED_COLUMNS}""",
        document_id, chunk_count, page_count)


async def release(db: Executor, document_id: uuid.UUID, reason: str) -> None:
    """processing → pending after a transient failure, for the message's retry (`error` says why)."""
    await db.execute(
        """UPDATE documents SET status = 'pending', stage = 'queued', lease_until = NULL, error = $2,
                  enqueued_at = now(), updated_at = now()
           WHERE id = $1 AND status = 'processing'""", document_id, f"retrying: {reason}")


async def fail(db: Executor, document_id: uuid.UUID, message: str, reason: str) -> asyncpg.Record | None:
    """pending or processing → failed, with a message and a stable reason code; None when already terminal.

    The processed version is marked failed with them. A replacement's failure leaves the active version in
    place: the document goes back to that version's status and error (completed, or failed if it had),
    and the row's `replaced_version` names the failed version (None for an upload's failure).
    """
    return await db.fetchrow(
        f"""WITH target AS (
                SELECT d.id AS target_id, d.pending_version AS replaced_version, a.status AS active_status,
                       a.error AS active_error, a.error_reason AS active_reason
                FROM documents d LEFT JOIN document_versions a
                     ON d.pending_version IS NOT NULL AND a.document_id = d.id AND a.version = d.version
                WHERE d.id = $1 AND d.status IN ('pending', 'processing') FOR UPDATE OF d),
            marked AS (
                UPDATE document_versions v SET status = 'failed', error = $2, error_reason = $3
                FROM documents d, target t
                WHERE d.id = t.target_id AND v.document_id = d.id
                  AND v.version = coalesce(d.pending_version, d.version))
            UPDATE documents SET
                   status = CASE WHEN replaced_version IS NULL THEN 'failed' ELSE coalesce(active_status, 'failed') END,
                   stage = CASE WHEN replaced_version IS NULL THEN 'failed' ELSE coalesce(active_status, 'failed') END,
                   error = CASE WHEN replaced_version IS NULL THEN $2 ELSE active_error END,
                   error_reason = CASE WHEN replaced_version IS NULL THEN $3 ELSE active_reason END,
                   pending_version = NULL, lease_until = NULL, updated_at = now()
            FROM target WHERE id = target.target_id RETURNING {FINISHED_COLUMNS}, replaced_version""",
        document_id, message[:1000], reason)


async def start_replacement(db: Executor, document_id: uuid.UUID, version: int) -> bool:
    """completed or failed → pending, processing `version` (already stored in document_versions) while the
    active version stays. False when a version of the document is being processed (or it is gone)."""
    started = await db.fetchval(
        """UPDATE documents SET status = 'pending', stage = 'queued', pending_version = $2, attempts = 0,
                  error = NULL, error_reason = NULL, pages_done = 0, pages_total = 0, chunks_done = 0,
                  chunks_total = 0, lease_until = NULL, enqueued_at = NULL, task_id = NULL, updated_at = now()
           WHERE id = $1 AND status IN ('completed', 'failed') AND pending_version IS NULL RETURNING 1""",
        document_id, version)
    return started is not None


# enqueueing and the sweeper -----------------------------------------------------------------------

async def mark_enqueued(db: Executor, document_id: uuid.UUID, task_id: str) -> None:
    """A message for the document is in the broker now (the sweeper leaves it alone for a while)."""
    await db.execute("UPDATE documents SET task_id = $2, enqueued_at = now(), updated_at = now() WHERE id = $1",
                     document_id, task_id)


async def recover_expired_leases(db: Executor, max_attempts: int) -> list[Mapping[str, object]]:
    """processing with an expired lease (its worker died) → pending, or failed (WORKER_LOST) once it used
    `max_attempts`. Returns (id, status) of each, with its new status. A replacement that used them up fails
    as `fail` says (its active version stays); it is reported as failed."""
    exhausted = await db.fetch(
        """SELECT id, attempts FROM documents
           WHERE status = 'processing' AND lease_until < now() AND attempts >= $1 AND pending_version IS NOT NULL""",
        max_attempts)
    replacements: list[Mapping[str, object]] = []
    for row in exhausted:
        if await fail(db, row["id"], f"processing did not finish after {row['attempts']} attempts (worker lost)",
                      WORKER_LOST) is not None:
            replacements.append({"id": row["id"], "status": Status.FAILED})
    return replacements + list(await db.fetch(
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
