"""Documents in Postgres: the source of truth for what was uploaded and how far processing got.

Every query that serves a caller goes through the caller's collections (services.ingest.collections): a
document in a collection the caller does not belong to is simply not found. Changes of status (and of
the lease, progress and enqueue marks) are in services.ingest.states.
"""

from __future__ import annotations

import uuid

import asyncpg

from docent.v1 import ingest_pb2
from services.ingest import collections, states
from services.ingest.collections import Caller
from services.ingest.states import Status
from services.runtime.ids import parse_uuid
from services.runtime.names import CHUNKS_COLLECTION
from services.runtime.pagination import PageCursor, timestamp

_STATUS_TO_PB = {
    Status.PENDING: ingest_pb2.DOCUMENT_STATUS_PENDING,
    Status.PROCESSING: ingest_pb2.DOCUMENT_STATUS_PROCESSING,
    Status.COMPLETED: ingest_pb2.DOCUMENT_STATUS_COMPLETED,
    Status.FAILED: ingest_pb2.DOCUMENT_STATUS_FAILED,
}
# what listing and watching read: never the bytes
COLUMNS = """id, user_id, collection_id, filename, mime_type, file_size, sha256, status, stage, error, error_reason,
             pages_done, pages_total, chunks_done, chunks_total, page_count, chunk_count, attempts, task_id,
             lease_until, enqueued_at, webhook_url, created_at, updated_at, indexed_at, version, pending_version"""
VERSION_COLUMNS = """document_id, version, filename, mime_type, file_size, sha256, status, error, error_reason,
                     created_at, indexed_at"""
_VERSION_STATUS = {"pending": Status.PENDING, "completed": Status.COMPLETED, "failed": Status.FAILED}


def _sha_lock_key(collection_id: uuid.UUID, sha256: str) -> str:
    return f"docent-document-sha256:{collection_id}:{sha256}"


async def _lock_sha256(conn: asyncpg.Connection, collection_id: uuid.UUID, sha256: str) -> None:
    """Serialise, per collection and content, the transactions that give a document these bytes (upload,
    replace): within a collection, one set of bytes is one document."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _sha_lock_key(collection_id, sha256))


def _version_pb(document: asyncpg.Record, version: asyncpg.Record) -> ingest_pb2.DocumentVersion:
    status = _VERSION_STATUS[version["status"]]
    # the version being processed has the document's processing status
    working = document["pending_version"] or document["version"]
    if version["version"] == working and document["status"] not in (Status.COMPLETED, Status.FAILED):
        status = Status(document["status"])
    item = ingest_pb2.DocumentVersion(
        version=version["version"], sha256=version["sha256"], file_size=version["file_size"],
        filename=version["filename"], mime_type=version["mime_type"], status=_STATUS_TO_PB[status],
        error=version["error"] or "", error_reason=version["error_reason"] or "",
        active=version["version"] == document["version"])
    for field_name, column in (("create_time", "created_at"), ("index_time", "indexed_at")):
        stamp = timestamp(version[column])
        if stamp is not None:
            getattr(item, field_name).CopyFrom(stamp)
    return item


def _searchable(row: asyncpg.Record) -> bool:
    """Completed, or being replaced while its indexed active version is still searched."""
    return row["status"] == Status.COMPLETED or (row["pending_version"] is not None and row["indexed_at"] is not None)


def to_pb(row: asyncpg.Record, versions: list[asyncpg.Record] | tuple[()] = ()) -> ingest_pb2.Document:
    document = ingest_pb2.Document(
        id=str(row["id"]), user_id=row["user_id"], collection_id=str(row["collection_id"]), filename=row["filename"],
        file_size=row["file_size"],
        mime_type=row["mime_type"], sha256=row["sha256"], status=_STATUS_TO_PB[row["status"]],
        error=row["error"] or "", error_reason=row["error_reason"] or "", page_count=row["page_count"],
        chunk_count=row["chunk_count"], task_id=row["task_id"] or "",
        progress=ingest_pb2.DocumentProgress(
            stage=row["stage"], pages_done=row["pages_done"], pages_total=row["pages_total"],
            chunks_done=row["chunks_done"], chunks_total=row["chunks_total"], attempts=row["attempts"]),
        vector_collection=CHUNKS_COLLECTION if _searchable(row) else "",
        version=row["version"], pending_version=row["pending_version"] or 0,
        versions=[_version_pb(row, version) for version in versions],
    )
    for field_name, column in (("create_time", "created_at"), ("update_time", "updated_at"),
                               ("index_time", "indexed_at")):
        stamp = timestamp(row[column])
        if stamp is not None:
            getattr(document, field_name).CopyFrom(stamp)
    return document


async def versions_of(db: asyncpg.Connection | asyncpg.Pool,
                      document_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[asyncpg.Record]]:
    """The versions of each document, oldest first."""
    rows = await db.fetch(f"""SELECT {VERSION_COLUMNS} FROM document_versions WHERE document_id = ANY($1::uuid[])
                               ORDER BY document_id, version""", document_ids)
    found: dict[uuid.UUID, list[asyncpg.Record]] = {ident: [] for ident in document_ids}
    for row in rows:
        found[row["document_id"]].append(row)
    return found


async def to_pbs(db: asyncpg.Connection | asyncpg.Pool, rows: list[asyncpg.Record]) -> list[ingest_pb2.Document]:
    """Documents with their version history (one query for all of them)."""
    versions = await versions_of(db, [row["id"] for row in rows])
    return [to_pb(row, versions[row["id"]]) for row in rows]


async def with_versions(db: asyncpg.Connection | asyncpg.Pool, row: asyncpg.Record) -> ingest_pb2.Document:
    return (await to_pbs(db, [row]))[0]


def state_key(row: asyncpg.Record) -> tuple[object, ...]:
    """What a watcher considers a change."""
    return (row["status"], row["stage"], row["pages_done"], row["pages_total"], row["chunks_done"],
            row["chunks_total"], row["error"], row["error_reason"], row["attempts"], row["version"],
            row["pending_version"])


async def insert(conn: asyncpg.Connection, *, user_id: str, collection_id: uuid.UUID, filename: str, mime_type: str,
                 content: bytes, sha256: str, webhook_url: str | None) -> tuple[asyncpg.Record, bool]:
    """Store row + bytes in one transaction; returns (row, created). The same bytes again in the same
    collection: the existing row (also when they are a pending replacement of one of its documents)."""
    async with conn.transaction():
        await _lock_sha256(conn, collection_id, sha256)
        replacing = await conn.fetchrow(
            f"""SELECT {COLUMNS} FROM documents d
                WHERE collection_id = $1 AND EXISTS (SELECT 1 FROM document_versions v WHERE v.document_id = d.id
                                                     AND v.version = d.pending_version AND v.sha256 = $2)""",
            collection_id, sha256)
        if replacing is not None:
            return replacing, False
        row = await conn.fetchrow(
            f"""INSERT INTO documents (id, user_id, collection_id, filename, mime_type, file_size, sha256, webhook_url)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (collection_id, sha256) DO NOTHING
                RETURNING {COLUMNS}""",
            uuid.uuid4(), user_id, collection_id, filename, mime_type, len(content), sha256, webhook_url,
        )
        if row is None:
            existing = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM documents WHERE collection_id = $1 AND sha256 = $2", collection_id, sha256)
            return existing, False
        await conn.execute("INSERT INTO document_blobs (document_id, version, content) VALUES ($1, 1, $2)",
                           row["id"], content)
        await conn.execute(
            """INSERT INTO document_versions (document_id, version, filename, mime_type, file_size, sha256, created_at)
               VALUES ($1, 1, $2, $3, $4, $5, $6)""",
            row["id"], filename, mime_type, len(content), sha256, row["created_at"])
    return row, True


class ReplaceRefused(Exception):
    """Why a replacement is not stored: `busy` (a version is being processed) or `duplicate_of` (another
    document of the collection has these bytes)."""

    def __init__(self, *, busy: bool = False, duplicate_of: uuid.UUID | None = None) -> None:
        super().__init__("busy" if busy else f"duplicate of {duplicate_of}")
        self.busy = busy
        self.duplicate_of = duplicate_of


async def insert_version(conn: asyncpg.Connection, *, caller: Caller, document_id: str, filename: str,
                         mime_type: str, content: bytes, sha256: str) -> tuple[asyncpg.Record | None, int]:
    """Store a new version of a document the caller may edit and make it the pending one, in one transaction.

    Returns (row, version): row None when the caller cannot read such a document; version 0 when the bytes
    are the active version's (nothing stored: a no-op). Raises PermissionDenied when the caller may read
    but not edit it, ReplaceRefused while a version of the document is pending or processing, or when
    another document of its collection has these bytes (active or pending), which keeps a collection's
    bytes to one document as uploads' deduplication wants.
    """
    found = await get(conn, caller, document_id)
    if found is None:
        return None, 0
    ident, collection_id = found["id"], found["collection_id"]
    await collections.require_role(conn, caller, str(collection_id), collections.EDITOR)
    async with conn.transaction():
        await _lock_sha256(conn, collection_id, sha256)
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM documents WHERE id = $1 FOR UPDATE", ident)
        if row is None:
            return None, 0
        if row["status"] not in (Status.COMPLETED, Status.FAILED) or row["pending_version"] is not None:
            raise ReplaceRefused(busy=True)
        if row["sha256"] == sha256:
            return row, 0
        other = await conn.fetchval(
            """SELECT d.id FROM documents d WHERE d.collection_id = $1 AND d.id <> $3
                 AND (d.sha256 = $2 OR EXISTS (SELECT 1 FROM document_versions v WHERE v.document_id = d.id
                                               AND v.version = d.pending_version AND v.sha256 = $2))
               LIMIT 1""", collection_id, sha256, ident)
        if other is not None:
            raise ReplaceRefused(duplicate_of=other)
        version = await conn.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM document_versions WHERE document_id = $1", ident)
        await conn.execute(
            """INSERT INTO document_versions (document_id, version, filename, mime_type, file_size, sha256)
               VALUES ($1, $2, $3, $4, $5, $6)""", ident, version, filename, mime_type, len(content), sha256)
        await conn.execute("INSERT INTO document_blobs (document_id, version, content) VALUES ($1, $2, $3)",
                           ident, version, content)
        if not await states.start_replacement(conn, ident, version):
            raise ReplaceRefused(busy=True)
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM documents WHERE id = $1", ident)
    return row, version


_READABLE = collections.readable_sql("collection_id", "$2", "$3")


async def get(conn: asyncpg.Connection | asyncpg.Pool, caller: Caller, document_id: str) -> asyncpg.Record | None:
    """The document, if it is in a collection the caller may read."""
    ident = parse_uuid(document_id)
    if ident is None:
        return None
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM documents WHERE id = $1 AND {_READABLE}",
                               ident, caller.user_id, caller.scope_list())


async def get_any(conn: asyncpg.Connection | asyncpg.Pool, document_id: str) -> asyncpg.Record | None:
    """For the worker, which acts on ids, not on behalf of a caller."""
    ident = parse_uuid(document_id)
    if ident is None:
        return None
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM documents WHERE id = $1", ident)


async def list_page(pool: asyncpg.Pool, caller: Caller, page_size: int, cursor: PageCursor | None,
                    collection_id: uuid.UUID | None = None) -> tuple[list[asyncpg.Record], PageCursor | None, int]:
    """The caller's documents (those of every collection they belong to, or of `collection_id`, which the
    servicer has checked they may read), newest first."""
    if collection_id is not None:
        where, args = "collection_id = $1", [collection_id]
    else:
        where = collections.readable_sql("collection_id", "$1", "$2")
        args = [caller.user_id, caller.scope_list()]
    page_args = [*args, page_size + 1]
    if cursor is None:
        rows = await pool.fetch(
            f"""SELECT {COLUMNS} FROM documents WHERE {where}
                ORDER BY created_at DESC, id DESC LIMIT ${len(page_args)}""", *page_args)
    else:
        page_args = [*args, cursor.at, cursor.id, page_size + 1]
        rows = await pool.fetch(
            f"""SELECT {COLUMNS} FROM documents
                WHERE {where} AND (created_at, id) < (${len(args) + 1}, ${len(args) + 2})
                ORDER BY created_at DESC, id DESC LIMIT ${len(page_args)}""", *page_args)
    total = await pool.fetchval(f"SELECT count(*) FROM documents WHERE {where}", *args)
    next_cursor = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        next_cursor = PageCursor(rows[-1]["created_at"], rows[-1]["id"])
    return list(rows), next_cursor, int(total)


async def delete(pool: asyncpg.Pool, document_id: uuid.UUID) -> bool:
    """Delete a document the servicer has checked the caller may delete (rows, versions, bytes)."""
    result = await pool.execute("DELETE FROM documents WHERE id = $1", document_id)
    return result.endswith(" 1")


async def usage(pool: asyncpg.Pool, user_id: str) -> tuple[int, int]:
    """How many documents the user uploaded (in any collection), and their files' total size in bytes."""
    row = await pool.fetchrow("SELECT count(*) AS documents, coalesce(sum(file_size), 0) AS bytes FROM documents "
                              "WHERE user_id = $1", user_id)
    return int(row["documents"]), int(row["bytes"])
