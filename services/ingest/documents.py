"""Documents in Postgres: the source of truth for what was uploaded and how far processing got.

Every query that serves a user names the user: a document of another user is simply not found.
Changes of status (and of the lease, progress and enqueue marks) are in services.ingest.states.
"""

from __future__ import annotations

import uuid

import asyncpg

from docent.v1 import ingest_pb2
from services.ingest.states import Status
from services.runtime.names import CHUNKS_COLLECTION
from services.runtime.pagination import PageCursor, timestamp

_STATUS_TO_PB = {
    Status.PENDING: ingest_pb2.DOCUMENT_STATUS_PENDING,
    Status.PROCESSING: ingest_pb2.DOCUMENT_STATUS_PROCESSING,
    Status.COMPLETED: ingest_pb2.DOCUMENT_STATUS_COMPLETED,
    Status.FAILED: ingest_pb2.DOCUMENT_STATUS_FAILED,
}
# what listing and watching read: never the bytes
COLUMNS = """id, user_id, filename, mime_type, file_size, sha256, status, stage, error, error_reason, pages_done,
             pages_total, chunks_done, chunks_total, page_count, chunk_count, attempts, task_id, lease_until,
             enqueued_at, webhook_url, created_at, updated_at, indexed_at"""


def to_pb(row: asyncpg.Record) -> ingest_pb2.Document:
    document = ingest_pb2.Document(
        id=str(row["id"]), user_id=row["user_id"], filename=row["filename"], file_size=row["file_size"],
        mime_type=row["mime_type"], sha256=row["sha256"], status=_STATUS_TO_PB[row["status"]],
        error=row["error"] or "", error_reason=row["error_reason"] or "", page_count=row["page_count"],
        chunk_count=row["chunk_count"], task_id=row["task_id"] or "",
        progress=ingest_pb2.DocumentProgress(
            stage=row["stage"], pages_done=row["pages_done"], pages_total=row["pages_total"],
            chunks_done=row["chunks_done"], chunks_total=row["chunks_total"], attempts=row["attempts"]),
        vector_collection=CHUNKS_COLLECTION if row["status"] == Status.COMPLETED else "",
    )
    for field_name, column in (("create_time", "created_at"), ("update_time", "updated_at"),
                               ("index_time", "indexed_at")):
        stamp = timestamp(row[column])
        if stamp is not None:
            getattr(document, field_name).CopyFrom(stamp)
    return document


def state_key(row: asyncpg.Record) -> tuple[object, ...]:
    """What a watcher considers a change."""
    return (row["status"], row["stage"], row["pages_done"], row["pages_total"], row["chunks_done"],
            row["chunks_total"], row["error"], row["error_reason"], row["attempts"])


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


async def insert(conn: asyncpg.Connection, *, user_id: str, filename: str, mime_type: str, content: bytes,
                 sha256: str, webhook_url: str | None) -> tuple[asyncpg.Record, bool]:
    """Store row + bytes in one transaction; returns (row, created). Same bytes again: the existing row."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO documents (id, user_id, filename, mime_type, file_size, sha256, webhook_url)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (user_id, sha256) DO NOTHING
                RETURNING {COLUMNS}""",
            uuid.uuid4(), user_id, filename, mime_type, len(content), sha256, webhook_url,
        )
        if row is None:
            existing = await conn.fetchrow(f"SELECT {COLUMNS} FROM documents WHERE user_id = $1 AND sha256 = $2",
                                           user_id, sha256)
            return existing, False
        await conn.execute("INSERT INTO document_blobs (document_id, content) VALUES ($1, $2)", row["id"], content)
    return row, True


async def get(conn: asyncpg.Connection | asyncpg.Pool, user_id: str, document_id: str) -> asyncpg.Record | None:
    ident = parse_uuid(document_id)
    if ident is None:
        return None
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM documents WHERE id = $1 AND user_id = $2", ident, user_id)


async def get_any(conn: asyncpg.Connection | asyncpg.Pool, document_id: str) -> asyncpg.Record | None:
    """For the worker, which acts on ids, not on behalf of a caller."""
    ident = parse_uuid(document_id)
    if ident is None:
        return None
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM documents WHERE id = $1", ident)


async def list_page(pool: asyncpg.Pool, user_id: str, page_size: int,
                    cursor: PageCursor | None) -> tuple[list[asyncpg.Record], PageCursor | None, int]:
    if cursor is None:
        rows = await pool.fetch(
            f"""SELECT {COLUMNS} FROM documents WHERE user_id = $1
                ORDER BY created_at DESC, id DESC LIMIT $2""", user_id, page_size + 1)
    else:
        rows = await pool.fetch(
            f"""SELECT {COLUMNS} FROM documents WHERE user_id = $1 AND (created_at, id) < ($2, $3)
                ORDER BY created_at DESC, id DESC LIMIT $4""", user_id, cursor.at, cursor.id, page_size + 1)
    total = await pool.fetchval("SELECT count(*) FROM documents WHERE user_id = $1", user_id)
    next_cursor = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_cursor = PageCursor(rows[-1]["created_at"], rows[-1]["id"])
    return list(rows), next_cursor, int(total)


async def delete(pool: asyncpg.Pool, user_id: str, document_id: str) -> bool:
    ident = parse_uuid(document_id)
    if ident is None:
        return False
    result = await pool.execute("DELETE FROM documents WHERE id = $1 AND user_id = $2", ident, user_id)
    return result.endswith(" 1")

