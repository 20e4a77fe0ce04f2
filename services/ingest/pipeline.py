"""Processing one document: claim → parse → chunk → embed → index → completed.

Idempotent and crash-safe: a document is claimed with a lease (a second run while the lease is
live does nothing), progress is persisted as it changes and renews the lease, point ids are
deterministic so a rerun overwrites, and leftovers of a longer earlier run are deleted. A
document deleted while it is processed has its freshly written vectors removed again.

A replacement (the document's pending version) runs the same way with its chunks written staged:
invisible to search beside the active version's. Once all are written, RetrievalService.
ActivateDocumentVersion switches search to them in one store operation, then `states.complete` makes the
version the active one. A crash between the two reruns the version: its chunks are then the searchable
ones and are rewritten visible in place, and the activation is repeated (both idempotent). A failed
replacement has its staged chunks removed; the active version is untouched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import grpc
import structlog

from docent.v1 import retrieval_pb2
from services.ingest import documents, states
from services.ingest.chunk import Chunk, chunk_pages
from services.ingest.contextual import document_title, embedding_text
from services.ingest.ocr import OcrOptions
from services.ingest.pages import NO_TEXT
from services.ingest.parse import ParseError, count_pages, iter_pages
from services.ingest.webhook import deliver_webhook
from services.runtime import tracing
from services.runtime.embeddings import Tokenizer
from services.runtime.resources import WorkerResources

log = structlog.get_logger("docent.ingest.pipeline")

PROGRESS_INTERVAL_SECONDS = 0.25
# while a batch of chunks is parsed (an OCR'd page takes seconds), progress is still written this often
HEARTBEAT_SECONDS = 1.0
UPSERT_BATCH_CHUNKS = 64
MAX_CHUNK_TOKENS = 200
OVERLAP_TOKENS = 30
PERMANENT_GRPC_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


# Stable reason codes stored in documents.error_reason beside the message. Parse failures carry their
# own (pages.PDF_ENCRYPTED, PDF_INVALID, NO_TEXT, EMPTY_FILE, DOCX_INVALID, CSV_INVALID, JSON_INVALID,
# UNSUPPORTED_TYPE); the sweeper writes states.WORKER_LOST for a document whose worker kept dying.
FILE_MISSING = "FILE_MISSING"
INDEX_REJECTED = "INDEX_REJECTED"
RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"


class PermanentFailure(Exception):
    """Retrying cannot help (bad file, incompatible configuration): the document fails now."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransientFailure(Exception):
    """A dependency was unavailable; the actor is retried with backoff."""


class DocumentGone(Exception):
    """The document was deleted, or another worker took it over, while it was processed."""


@dataclass
class Claim:
    id: uuid.UUID
    user_id: str
    filename: str
    mime_type: str
    attempts: int
    version: int = 1
    staged: bool = False  # a replacement: written invisible until activated
    collection_id: str = ""  # the document's collection: its chunks carry it, and search filters on it


class Progress:
    """Persists stage and counts (throttled), renewing the lease each time."""

    def __init__(self, pool: asyncpg.Pool, document_id: uuid.UUID, lease_seconds: int) -> None:
        self.pool = pool
        self.document_id = document_id
        self.lease_seconds = lease_seconds
        self.values: dict[str, object] = {}
        self._last_write = 0.0

    async def update(self, *, force: bool = False, **values: object) -> None:
        self.values.update(values)
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_INTERVAL_SECONDS:
            return
        self._last_write = now
        if not await states.record_progress(self.pool, self.document_id, self.lease_seconds, self.values):
            raise DocumentGone(str(self.document_id))


async def claim(pool: asyncpg.Pool, document_id: str, lease_seconds: int) -> Claim | None:
    ident = documents.parse_uuid(document_id)
    if ident is None:
        return None
    row = await states.claim(pool, ident, lease_seconds)
    if row is None:
        return None
    return Claim(row["id"], row["user_id"], row["filename"], row["mime_type"], row["attempts"], row["version"],
                 row["staged"], str(row["collection_id"]))


async def release(pool: asyncpg.Pool, document_id: str, reason: str) -> None:
    """Back to pending for a retry (the message is retried with backoff; the sweeper is the safety net)."""
    ident = documents.parse_uuid(document_id)
    if ident is not None:
        await states.release(pool, ident, reason)


async def fail(resources: WorkerResources, document_id: str, message: str, reason: str) -> None:
    ident = documents.parse_uuid(document_id)
    row = None if ident is None else await states.fail(resources.pool, ident, message, reason)
    if row is None:
        return
    if row["replaced_version"] is not None:
        # the active version stays: only the failed version's staged chunks go
        log.info("document_version_failed", document_id=document_id, version=row["replaced_version"], error=message,
                 reason=reason)
        await _remove_vectors(resources, row["user_id"], document_id, version=row["replaced_version"])
        return
    log.info("document_failed", document_id=document_id, error=message, reason=reason)
    await _remove_vectors(resources, row["user_id"], document_id)
    await deliver_webhook(resources, row)


async def _remove_vectors(resources: WorkerResources, user_id: str, document_id: str, version: int = 0) -> None:
    """Every version's chunks, or (`version`) only that version's while it is not the searchable one."""
    try:
        await resources.retrieval.DeleteDocumentChunks(
            retrieval_pb2.DeleteDocumentChunksRequest(document_id=document_id, version=version),
            **resources.call_options_for(user_id))
    except grpc.aio.AioRpcError as error:
        log.warning("vector_cleanup_failed", document_id=document_id, code=error.code().name)


def _parse_and_chunk(content: bytes, mime_type: str, pages_seen: list[int], ocr: OcrOptions) -> Iterator[Chunk]:
    def counted_pages():
        for page in iter_pages(content, mime_type, ocr):
            pages_seen[0] += 1
            yield page

    return chunk_pages(counted_pages(), Tokenizer.shared().count, max_tokens=MAX_CHUNK_TOKENS,
                       overlap_tokens=OVERLAP_TOKENS)


async def process_document(resources: WorkerResources, document_id: str) -> str | None:
    """Run the pipeline for one document; returns its final status, or None when there was nothing to do."""
    pool = resources.pool
    lease = resources.settings.lease_seconds
    claimed = await claim(pool, document_id, lease)
    if claimed is None:
        log.info("document_not_claimed", document_id=document_id)  # done, deleted, or another worker has it
        return None
    try:
        return await _run(resources, claimed)
    except DocumentGone:
        if await documents.get_any(pool, document_id) is None:
            # deleted while we worked: take back what we wrote
            log.info("document_deleted_while_processing", document_id=document_id)
            await _remove_vectors(resources, claimed.user_id, document_id)
        else:
            log.info("document_taken_over", document_id=document_id)  # our lease expired; another run owns it
        return None


async def _run(resources: WorkerResources, claimed: Claim) -> str:
    pool = resources.pool
    document_id = str(claimed.id)
    started = time.perf_counter()
    bound = log.bind(document_id=document_id, attempt=claimed.attempts)
    progress = Progress(pool, claimed.id, resources.settings.lease_seconds)
    content = await pool.fetchval("SELECT content FROM document_blobs WHERE document_id = $1 AND version = $2",
                                  claimed.id, claimed.version)
    if content is None:
        raise PermanentFailure("the stored file is missing", FILE_MISSING)

    # parse + chunk (CPU work in a thread, one chunk at a time: memory stays bounded); one span, as the
    # chunker consumes the parser's pages as they come
    try:
        with tracing.span("ingest.parse_chunk", {"docent.document_id": document_id,
                                                 "docent.mime_type": claimed.mime_type}) as parse_span:
            pages_total = await asyncio.to_thread(count_pages, content, claimed.mime_type)
            await progress.update(force=True, stage="parsing", pages_total=pages_total)
            pages_seen = [0]
            chunk_iter = _parse_and_chunk(content, claimed.mime_type, pages_seen,
                                          OcrOptions.from_settings(resources.settings))
            chunks: list[Chunk] = []

            def pages_done() -> int:
                return min(pages_seen[0], pages_total) if pages_total else pages_seen[0]

            while True:
                batch = await _renewing(progress, asyncio.to_thread(_take, chunk_iter, 32), pages_done)
                chunks.extend(batch)
                await progress.update(pages_done=pages_done())
                if len(batch) < 32:
                    break
            parse_span.set_attributes({"docent.pages": pages_seen[0], "docent.chunks": len(chunks)})
    except ParseError as error:
        raise PermanentFailure(str(error), error.reason) from None
    del content
    if not chunks:
        raise PermanentFailure("no extractable text", NO_TEXT)
    pages_done = pages_seen[0]
    await progress.update(force=True, stage="chunking", pages_done=pages_done,
                          pages_total=max(pages_total, pages_done), chunks_total=len(chunks))

    # embed in small batches, index as we go: the first chunks are searchable early
    embedder = await resources.embedder()
    title = document_title(claimed.filename) if resources.settings.contextual_chunks else ""
    await progress.update(force=True, stage="embedding", chunks_done=0)
    pending: list[retrieval_pb2.Chunk] = []
    for start in range(0, len(chunks), embedder.batch_size):
        batch = chunks[start:start + embedder.batch_size]
        with tracing.span("ingest.embed", {"docent.chunks": len(batch), "docent.embedding_model": embedder.model_name}):
            vectors = await asyncio.to_thread(embedder.embed, [embedding_text(title, chunk.text) for chunk in batch])
        pending.extend(
            retrieval_pb2.Chunk(chunk_index=chunk.index, text=chunk.text, page_start=chunk.page_start,
                                page_end=chunk.page_end, embedding=vector.tolist(), token_count=chunk.token_count)
            for chunk, vector in zip(batch, vectors, strict=True))
        last = start + embedder.batch_size >= len(chunks)
        if len(pending) >= UPSERT_BATCH_CHUNKS or last:
            if last:
                await progress.update(force=True, stage="indexing", chunks_done=start + len(batch))
            with tracing.span("ingest.index", {"docent.chunks": len(pending)}):
                await _upsert(resources, claimed, pending, embedder.model_name,
                              document_chunk_count=len(chunks) if last else 0)
            pending = []
        await progress.update(chunks_done=start + len(batch))

    if claimed.staged:
        await _activate(resources, claimed)
    row = await states.complete(pool, claimed.id, chunk_count=len(chunks), page_count=max(pages_total, pages_done))
    if row is None:
        raise DocumentGone(document_id)
    bound.info("document_completed", pages=row["page_count"], chunks=len(chunks), version=claimed.version,
               seconds=round(time.perf_counter() - started, 2))
    await deliver_webhook(resources, row)
    return states.Status.COMPLETED


async def _renewing(progress: Progress, work, pages_done) -> list[Chunk]:
    """Await `work`, writing "parsing page i/N" (which renews the lease) every HEARTBEAT_SECONDS meanwhile."""
    task = asyncio.ensure_future(work)
    # if the heartbeat raises (document deleted), the thread still finishes: consume its outcome
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    while True:
        finished, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
        if finished:
            return task.result()
        await progress.update(force=True, pages_done=pages_done())


def _take(iterator: Iterator[Chunk], count: int) -> list[Chunk]:
    taken: list[Chunk] = []
    for item in iterator:
        taken.append(item)
        if len(taken) >= count:
            break
    return taken


async def _upsert(resources: WorkerResources, claimed: Claim, chunks: list[retrieval_pb2.Chunk], model: str,
                  document_chunk_count: int) -> None:
    request = retrieval_pb2.UpsertChunksRequest(
        document_id=str(claimed.id), filename=claimed.filename, chunks=chunks, embedding_model=model,
        document_chunk_count=document_chunk_count, version=claimed.version, staged=claimed.staged,
        collection_id=claimed.collection_id)
    try:
        await resources.retrieval.UpsertChunks(
            request, **resources.call_options_for(claimed.user_id, collections=(claimed.collection_id,)))
    except grpc.aio.AioRpcError as error:
        if error.code() in PERMANENT_GRPC_CODES:
            raise PermanentFailure(f"the retrieval service rejected the chunks: {error.details()}",
                                   INDEX_REJECTED) from None
        raise TransientFailure(f"retrieval service {error.code().name.lower()}") from None


async def _activate(resources: WorkerResources, claimed: Claim) -> None:
    """Switch search to the replacement's chunks (one store operation), then the old version's are removed."""
    request = retrieval_pb2.ActivateDocumentVersionRequest(document_id=str(claimed.id), version=claimed.version)
    try:
        await resources.retrieval.ActivateDocumentVersion(request, **resources.call_options_for(claimed.user_id))
    except grpc.aio.AioRpcError as error:
        if error.code() in PERMANENT_GRPC_CODES:
            raise PermanentFailure(f"the retrieval service could not switch to the new version: {error.details()}",
                                   INDEX_REJECTED) from None
        raise TransientFailure(f"retrieval service {error.code().name.lower()}") from None
