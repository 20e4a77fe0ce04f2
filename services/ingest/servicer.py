"""IngestService: uploads acknowledged at once; processing happens in the workers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import structlog
from google.protobuf import empty_pb2, timestamp_pb2

from docent.v1 import ingest_pb2, ingest_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.ingest import collections, documents, formats, states
from services.ingest.collection_rpcs import CollectionMethods
from services.ingest.collections import Caller
from services.ingest.events import DocumentEvents
from services.ingest.filetypes import EmptyFile, UnsupportedType, detect_type
from services.ingest.webhook_target import refused_reason
from services.runtime.auth import mint_token
from services.runtime.call_context import current_identity, current_user_id, require_admin, require_write
from services.runtime.config import Settings
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    from_rpc_error,
)
from services.runtime.grpc_client import call_options
from services.runtime.membership import MembershipEpochs
from services.runtime.names import PROCESS_DOCUMENT
from services.runtime.pagination import page_request
from services.runtime.queue import INGEST_QUEUE, Enqueuer
from services.runtime.quotas import Quotas

log = structlog.get_logger("docent.ingest")

HEAD_BYTES = 8192
WATCH_POLL_SECONDS = 2.0
MAX_FILENAME = 255
UploadMessage = ingest_pb2.UploadDocumentRequest | ingest_pb2.ReplaceDocumentRequest


def clean_filename(raw: str) -> str:
    name = os.path.basename(raw.replace("\\", "/")).strip()
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    if not name or name in (".", ".."):
        raise InvalidArgument("filename is required", reason="FILENAME_REQUIRED")
    if len(name) > MAX_FILENAME:
        stem, dot, extension = name.rpartition(".")
        name = (stem[: MAX_FILENAME - len(extension) - 1] + dot + extension) if dot else name[:MAX_FILENAME]
    return name


async def _receive(request_iterator: AsyncIterator[UploadMessage],
                   limit: int) -> tuple[Any, bytes, str]:
    """An upload or replacement stream: (its metadata, the bytes, their sha256). The metadata comes first
    and once; more than `limit` bytes is FILE_TOO_LARGE."""
    metadata = None
    content = bytearray()
    digest = hashlib.sha256()
    async for message in request_iterator:
        if message.HasField("metadata"):
            if metadata is not None or content:
                raise InvalidArgument("metadata must be sent once, before the bytes", reason="UPLOAD_PROTOCOL")
            metadata = message.metadata
            continue
        if metadata is None:
            raise InvalidArgument("the first message must carry the metadata", reason="UPLOAD_PROTOCOL")
        if len(content) + len(message.chunk) > limit:
            raise ResourceExhausted(f"file is larger than the {limit} byte limit", reason="FILE_TOO_LARGE",
                                    limit_bytes=limit)
        content.extend(message.chunk)
        digest.update(message.chunk)
    if metadata is None:
        raise InvalidArgument("no upload metadata received", reason="UPLOAD_PROTOCOL")
    return metadata, bytes(content), digest.hexdigest()


def _document_not_found(document_id: str) -> NotFound:
    return NotFound(f"document {document_id} not found", reason="DOCUMENT_NOT_FOUND", document_id=document_id)


def _caller() -> Caller:
    return Caller.of(current_identity())


class IngestServicer(CollectionMethods, ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, settings: Settings, pool: asyncpg.Pool, enqueuer: Enqueuer,
                 retrieval: retrieval_pb2_grpc.RetrievalServiceStub, events: DocumentEvents, quotas: Quotas,
                 secret: str, membership: MembershipEpochs) -> None:
        self.settings = settings
        # signs the token of a call made for a document's uploader (deleting its chunks)
        self.secret = secret
        self.quotas = quotas
        self.pool = pool
        self.enqueuer = enqueuer
        self.retrieval = retrieval
        self.events = events
        self.membership = membership

    async def UploadDocument(self, request_iterator: AsyncIterator[ingest_pb2.UploadDocumentRequest],
                             context: grpc.aio.ServicerContext) -> ingest_pb2.UploadDocumentResponse:
        identity = require_write()
        await self.quotas.admit_upload(identity)
        caller = Caller.of(identity)
        metadata, content, sha256 = await _receive(request_iterator, self.settings.max_upload_bytes)
        # before anything is stored: an upload into a collection the caller may not edit is refused
        collection_id = await collections.upload_target(self.pool, caller, metadata.collection_id)
        filename = clean_filename(metadata.filename)
        webhook_url = metadata.webhook_url.strip() or None
        if webhook_url and not webhook_url.startswith(("http://", "https://")):
            raise InvalidArgument("webhook_url must be an http(s) URL", reason="WEBHOOK_URL_INVALID")
        if webhook_url:
            refused = await refused_reason(webhook_url, self.settings.webhook_allow_private)
            if refused:
                raise InvalidArgument(f"webhook_url is not allowed: {refused} (DOCENT_WEBHOOK_ALLOW_PRIVATE)",
                                      reason="WEBHOOK_URL_FORBIDDEN")
        try:
            mime_type = detect_type(filename, metadata.content_type, content[:HEAD_BYTES])
        except EmptyFile:
            raise InvalidArgument("the file is empty", reason="EMPTY_FILE") from None
        except UnsupportedType as error:
            raise InvalidArgument(str(error), reason="UNSUPPORTED_FILE_TYPE") from None

        await self._check_storage(caller.user_id, len(content))
        async with self.pool.acquire() as conn:
            row, created = await documents.insert(
                conn, user_id=caller.user_id, collection_id=collection_id, filename=filename, mime_type=mime_type,
                content=content, sha256=sha256, webhook_url=webhook_url)
        if created:
            row = await self._enqueue(row)
        log.info("document_uploaded", document_id=str(row["id"]), bytes=len(content), mime_type=mime_type,
                 deduplicated=not created)
        return ingest_pb2.UploadDocumentResponse(document=await documents.with_versions(self.pool, row),
                                                 deduplicated=not created)

    async def ReplaceDocument(self, request_iterator: AsyncIterator[ingest_pb2.ReplaceDocumentRequest],
                              context: grpc.aio.ServicerContext) -> ingest_pb2.ReplaceDocumentResponse:
        """A new version of one of the caller's documents: stored and queued; the active version stays
        searchable until the new one is indexed (the worker switches them, see states and pipeline). Writes
        like an upload: a read-only API key is refused, and it counts against the uploads-per-minute quota."""
        identity = require_write()
        await self.quotas.admit_upload(identity)
        metadata, content, sha256 = await _receive(request_iterator, self.settings.max_upload_bytes)
        filename = clean_filename(metadata.filename)
        if not metadata.document_id.strip():
            raise InvalidArgument("document_id is required", reason="DOCUMENT_ID_REQUIRED")
        try:
            mime_type = detect_type(filename, metadata.content_type, content[:HEAD_BYTES])
        except EmptyFile:
            raise InvalidArgument("the file is empty", reason="EMPTY_FILE") from None
        except UnsupportedType as error:
            raise InvalidArgument(str(error), reason="UNSUPPORTED_FILE_TYPE") from None
        try:
            async with self.pool.acquire() as conn:
                row, version = await documents.insert_version(
                    conn, caller=Caller.of(identity), document_id=metadata.document_id, filename=filename,
                    mime_type=mime_type, content=content, sha256=sha256)
        except documents.ReplaceRefused as refused:
            if refused.busy:
                raise FailedPrecondition(
                    "a version of this document is being processed; replace it once that is finished",
                    reason="DOCUMENT_BUSY", document_id=metadata.document_id) from None
            raise AlreadyExists("another document of this collection has exactly these bytes",
                                reason="DUPLICATE_DOCUMENT",
                                document_id=str(refused.duplicate_of)) from None
        if row is None:
            raise _document_not_found(metadata.document_id)
        if version:
            row = await self._enqueue(row)
        log.info("document_replaced", document_id=str(row["id"]), version=version or row["version"],
                 bytes=len(content), mime_type=mime_type, deduplicated=not version)
        return ingest_pb2.ReplaceDocumentResponse(document=await documents.with_versions(self.pool, row),
                                                  deduplicated=not version, version=version or row["version"])

    async def _check_storage(self, user_id: str, size: int) -> None:
        """The stored-bytes and document quotas (DOCENT_QUOTA_STORED_BYTES / DOCENT_QUOTA_DOCUMENTS), counted
        in Postgres, so every replica enforces the same numbers. Concurrent uploads of one user may pass
        together and exceed a quota by what they carry."""
        max_documents, max_bytes = self.settings.quota_documents, self.settings.quota_stored_bytes
        if not max_documents and not max_bytes:
            return
        count, stored = await documents.usage(self.pool, user_id)
        if max_documents and count + 1 > max_documents:
            raise ResourceExhausted(f"your quota of {max_documents} documents is used: delete some to upload more",
                                    reason="DOCUMENT_QUOTA_EXCEEDED", quota_documents=max_documents)
        if max_bytes and stored + size > max_bytes:
            raise ResourceExhausted(f"this file would take your storage past its quota of {max_bytes} bytes "
                                    f"({stored} used): delete documents to make room",
                                    reason="STORAGE_QUOTA_EXCEEDED", quota_bytes=max_bytes, stored_bytes=stored)

    async def GetUsage(self, request: ingest_pb2.GetUsageRequest,
                       context: grpc.aio.ServicerContext) -> ingest_pb2.Usage:
        count, stored = await documents.usage(self.pool, current_user_id())
        return ingest_pb2.Usage(documents=count, stored_bytes=stored, documents_limit=self.settings.quota_documents,
                                stored_bytes_limit=self.settings.quota_stored_bytes,
                                uploads_per_minute_limit=self.settings.quota_uploads_per_minute)

    async def _enqueue(self, row: asyncpg.Record) -> asyncpg.Record:
        """Enqueue processing. A lost enqueue is not an error: the sweeper re-enqueues pending documents."""
        try:
            task_id = await self.enqueuer.enqueue(INGEST_QUEUE, PROCESS_DOCUMENT, str(row["id"]))
        except Exception as error:  # Redis down: the row is safe in Postgres, the sweeper retries
            log.warning("enqueue_failed", document_id=str(row["id"]), error=type(error).__name__)
            return row
        await states.mark_enqueued(self.pool, row["id"], task_id)
        return await documents.get_any(self.pool, str(row["id"])) or row

    async def ReindexDocuments(self, request: ingest_pb2.ReindexDocumentsRequest,
                               context: grpc.aio.ServicerContext) -> ingest_pb2.ReindexDocumentsResponse:
        """Operator only: every document that did not fail is processed again from its stored file."""
        require_admin()
        requeued = await states.requeue_all(self.pool)
        enqueued = 0
        for document_id in requeued:
            try:
                task_id = await self.enqueuer.enqueue(INGEST_QUEUE, PROCESS_DOCUMENT, str(document_id))
            except Exception as error:  # Redis down: they are pending, the sweeper enqueues them
                log.warning("reindex_enqueue_failed", error=type(error).__name__, left=len(requeued) - enqueued)
                break
            await states.mark_enqueued(self.pool, document_id, task_id)
            enqueued += 1
        log.warning("documents_reindex", requeued=len(requeued), enqueued=enqueued)
        return ingest_pb2.ReindexDocumentsResponse(documents_requeued=len(requeued), documents_enqueued=enqueued)

    async def GetDocument(self, request: ingest_pb2.GetDocumentRequest, context: grpc.aio.ServicerContext):
        row = await documents.get(self.pool, _caller(), request.document_id)
        if row is None:
            raise _document_not_found(request.document_id)
        return await documents.with_versions(self.pool, row)

    async def ListDocuments(self, request: ingest_pb2.ListDocumentsRequest, context: grpc.aio.ServicerContext):
        page_size, cursor = page_request(request.page_size, request.page_token)
        caller = _caller()
        collection_id = None
        if request.collection_id:
            collection_id = await collections.require_role(self.pool, caller, request.collection_id,
                                                           collections.VIEWER)
        rows, next_cursor, total = await documents.list_page(self.pool, caller, page_size, cursor, collection_id)
        return ingest_pb2.ListDocumentsResponse(
            documents=await documents.to_pbs(self.pool, rows),
            next_page_token=next_cursor.encode() if next_cursor else "", total_size=total)

    async def ListFileTypes(self, request: ingest_pb2.ListFileTypesRequest,
                            context: grpc.aio.ServicerContext) -> ingest_pb2.ListFileTypesResponse:
        """The registered file types in registration order (authenticated like every RPC, the same for all users)."""
        return ingest_pb2.ListFileTypesResponse(file_types=[
            ingest_pb2.FileType(mime_type=file_type.mime, label=file_type.label, extensions=file_type.extensions)
            for file_type in formats.REGISTRY.file_types])

    async def DeleteDocument(self, request: ingest_pb2.DeleteDocumentRequest, context: grpc.aio.ServicerContext):
        caller = Caller.of(require_write())
        row = await documents.get(self.pool, caller, request.document_id)
        if row is None:
            raise _document_not_found(request.document_id)
        await collections.require_role(self.pool, caller, str(row["collection_id"]), collections.EDITOR)
        # vectors first: if the retrieval service is down the row stays, and the delete can be retried. The
        # chunks are their uploader's (an editor may delete another member's document): the call is made as
        # the uploader.
        try:
            await self.retrieval.DeleteDocumentChunks(
                retrieval_pb2.DeleteDocumentChunksRequest(document_id=str(row["id"])),
                **call_options(mint_token(self.secret, row["user_id"], 60), self.settings.grpc_deadline_seconds))
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        await documents.delete(self.pool, row["id"])
        log.info("document_deleted", document_id=str(row["id"]))
        return empty_pb2.Empty()

    async def WatchDocument(self, request: ingest_pb2.WatchDocumentRequest, context: grpc.aio.ServicerContext):
        caller = _caller()
        row = await documents.get(self.pool, caller, request.document_id)
        if row is None:
            raise _document_not_found(request.document_id)
        document_id = str(row["id"])
        changed = await self.events.subscribe(document_id)
        try:
            last = None
            while True:
                if row is None:
                    raise _document_not_found(document_id)  # deleted while watched
                key = documents.state_key(row)
                if key != last:
                    last = key
                    stamp = timestamp_pb2.Timestamp()
                    stamp.GetCurrentTime()
                    yield ingest_pb2.WatchDocumentResponse(document=await documents.with_versions(self.pool, row),
                                                           event_time=stamp)
                if row["status"] in states.TERMINAL:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), WATCH_POLL_SECONDS)
                except TimeoutError:
                    pass
                changed.clear()
                row = await documents.get(self.pool, caller, document_id)
        finally:
            self.events.unsubscribe(document_id, changed)
