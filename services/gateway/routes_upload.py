"""Documents: the seed's /api/upload/ endpoints, plus live progress over SSE.

Uploads are read from the (disk-spooled) multipart file in chunks straight into the client-streaming
IngestService.UploadDocument call, so the gateway never holds a whole file in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile, status
from fastapi.responses import StreamingResponse

from docent.v1 import ingest_pb2
from services.gateway.accounts import CallerDep, StateDep
from services.gateway.errors import (
    INTERNAL,
    UNAUTHORIZED,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    error_responses,
)
from services.gateway.schemas import (
    TERMINAL,
    DocumentEvent,
    DocumentOut,
    DocumentStatusOut,
    ErrorEvent,
    sse_openapi,
)
from services.gateway.sse import event, open_stream, relay, sse_response
from services.gateway.state import WATCH_TIMEOUT_SECONDS

router = APIRouter(prefix="/api/upload", tags=["documents"])
UPLOAD_CHUNK_BYTES = 256 * 1024
LIST_PAGE_SIZE = 100
COLLECTION_PARAMETER = "the collection to upload into (editor or owner); the caller's personal collection when absent"

_COMMON = {401: UNAUTHORIZED, 500: INTERNAL, 503: UPSTREAM_UNAVAILABLE, 504: UPSTREAM_TIMEOUT}
_ERRORS = error_responses({**_COMMON, 404: "no such document in the caller's collections (DOCUMENT_NOT_FOUND)",
                           403: "delete: the caller may read but not change it (COLLECTION_ROLE_REQUIRED, "
                                "API_KEY_READ_ONLY)"}, validation=True)
EVENTS_DESCRIPTION = """Live progress as server-sent events, from the current state until completed or failed.

Browsers' EventSource cannot send headers: `?access_token=` is accepted here instead.

Each event's `data` is one line of JSON:

| event | data | when |
|---|---|---|
| `progress` | `DocumentEvent` (the status of GET /api/upload/{id}/status plus the `document`) | at once, then at each \
change; its `id` is the change's time in milliseconds |
| `done` | `DocumentEvent` | after the `progress` event whose status is `completed` or `failed`; the stream ends |
| `error` | `ErrorEvent` (`detail`, `reason`, `status`) | the stream failed after it started; it ends |

Comment lines (`: ping`) keep a quiet stream open every 15 s.
"""


async def _upload_messages(file: UploadFile, collection_id: str) -> AsyncIterator[ingest_pb2.UploadDocumentRequest]:
    yield ingest_pb2.UploadDocumentRequest(metadata=ingest_pb2.UploadMetadata(
        filename=file.filename or "", content_type=file.content_type or "", collection_id=collection_id))
    while chunk := await file.read(UPLOAD_CHUNK_BYTES):
        yield ingest_pb2.UploadDocumentRequest(chunk=chunk)


@router.post("/", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentOut, operation_id="uploadDocument",
             responses=error_responses({**_COMMON, 400: "empty or unreadable file (EMPTY_FILE, ...)",
                                        413: "larger than DOCENT_MAX_UPLOAD_BYTES (FILE_TOO_LARGE)",
                                        415: "a type GET /api/file-types does not list (UNSUPPORTED_FILE_TYPE)",
                                        403: "the caller may read but not edit the collection "
                                             "(COLLECTION_ROLE_REQUIRED), or a read-only API key",
                                        404: "no such collection among the caller's (COLLECTION_NOT_FOUND)"},
                                       validation=True))
async def upload(caller: CallerDep, state: StateDep,
                 file: Annotated[UploadFile, File(description="the document, of a type GET /api/file-types lists")],
                 collection_id: Annotated[str, Query(max_length=64, description=COLLECTION_PARAMETER)] = "",
                 ) -> DocumentOut:
    """Store the file and queue its processing; returns at once (202) with status `pending`."""
    reply = await state.ingest.UploadDocument(_upload_messages(file, collection_id), **state.options(caller))
    return DocumentOut.from_upload(reply)


async def _replace_messages(document_id: str, file: UploadFile) -> AsyncIterator[ingest_pb2.ReplaceDocumentRequest]:
    yield ingest_pb2.ReplaceDocumentRequest(metadata=ingest_pb2.ReplaceMetadata(
        document_id=document_id, filename=file.filename or "", content_type=file.content_type or ""))
    while chunk := await file.read(UPLOAD_CHUNK_BYTES):
        yield ingest_pb2.ReplaceDocumentRequest(chunk=chunk)


@router.put("/{document_id}", status_code=status.HTTP_202_ACCEPTED, response_model=DocumentOut,
            operation_id="replaceDocument",
            responses=error_responses({**_COMMON, 400: "empty or unreadable file (EMPTY_FILE, ...)",
                                       404: "no such document in the caller's collections (DOCUMENT_NOT_FOUND)",
                                       403: "the caller may read but not change it (COLLECTION_ROLE_REQUIRED, "
                                            "API_KEY_READ_ONLY)",
                                       409: "a version of the document is being processed (DOCUMENT_BUSY), or "
                                            "another of the caller's documents has these bytes (DUPLICATE_DOCUMENT)",
                                       413: "larger than DOCENT_MAX_UPLOAD_BYTES (FILE_TOO_LARGE)",
                                       415: "a type GET /api/file-types does not list (UNSUPPORTED_FILE_TYPE)"},
                                      validation=True))
async def replace(document_id: str, caller: CallerDep, state: StateDep,
                  file: Annotated[UploadFile, File(description="the new version, of a type GET /api/file-types "
                                                               "lists")]) -> DocumentOut:
    """Replace the document's file in place (same id); returns at once (202) with `pending_version` set.

    The active version (`version`) stays searchable until the new one is fully indexed, then search switches
    to it in one step. If the new version fails, the active one stays; the failure is in `versions`. There
    is no queue: while a version is pending or processing, another replacement is 409 (DOCUMENT_BUSY).
    The active version's own bytes again change nothing (`deduplicated: true`, no new version)."""
    reply = await state.ingest.ReplaceDocument(_replace_messages(document_id, file), **state.options(caller))
    return DocumentOut.from_replace(reply)


@router.get("/", response_model=list[DocumentOut], operation_id="listDocuments",
            responses=error_responses({**_COMMON, 404: "collection_id names no collection of the caller's "
                                                            "(COLLECTION_NOT_FOUND)"}, validation=True))
async def list_documents(caller: CallerDep, state: StateDep, response: Response,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
                         collection_id: Annotated[str, Query(max_length=64, description="only this collection's "
                                                                                        "documents")] = "",
                         ) -> list[DocumentOut]:
    """The documents of the caller's collections (or of one), newest first (total in the `X-Total-Count`
    header)."""
    documents: list[DocumentOut] = []
    token = ""
    total = 0
    while len(documents) < limit:
        page = await state.ingest.ListDocuments(
            ingest_pb2.ListDocumentsRequest(page_size=min(LIST_PAGE_SIZE, limit - len(documents)), page_token=token,
                                            collection_id=collection_id),
            **state.options(caller))
        documents.extend(DocumentOut.from_proto(document) for document in page.documents)
        total = page.total_size
        token = page.next_page_token
        if not token:
            break
    response.headers["X-Total-Count"] = str(total)
    return documents


@router.get("/{document_id}", response_model=DocumentOut, operation_id="getDocument", responses=_ERRORS)
async def get_document(document_id: str, caller: CallerDep, state: StateDep) -> DocumentOut:
    """One document of the caller's, with its progress."""
    document = await state.ingest.GetDocument(ingest_pb2.GetDocumentRequest(document_id=document_id),
                                              **state.options(caller))
    return DocumentOut.from_proto(document)


@router.get("/{document_id}/status", response_model=DocumentStatusOut, operation_id="getDocumentStatus",
            responses=_ERRORS)
async def document_status(document_id: str, caller: CallerDep, state: StateDep) -> DocumentStatusOut:
    """Status with the seed's `task` block and the worker's progress (stage, pages, chunks)."""
    document = await state.ingest.GetDocument(ingest_pb2.GetDocumentRequest(document_id=document_id),
                                              **state.options(caller))
    return DocumentStatusOut.from_proto(document)


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT, operation_id="deleteDocument",
               responses=_ERRORS)
async def delete_document(document_id: str, caller: CallerDep, state: StateDep) -> Response:
    """Remove the document, its stored bytes and its chunks in the vector store."""
    await state.ingest.DeleteDocument(ingest_pb2.DeleteDocumentRequest(document_id=document_id),
                                      **state.options(caller))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _progress_frames(message: ingest_pb2.WatchDocumentResponse) -> Iterable[bytes]:
    body = DocumentEvent.from_proto(message.document)
    stamp = message.event_time
    event_id = f"{stamp.seconds}{stamp.nanos // 1_000_000:03d}" if stamp.seconds else None
    yield event("progress", body, event_id)
    if body.status in TERMINAL:
        yield event("done", body, event_id)


@router.get("/{document_id}/events", response_class=StreamingResponse, operation_id="streamDocumentEvents",
            description=EVENTS_DESCRIPTION,
            responses={**_ERRORS, 200: sse_openapi(
                {"progress": DocumentEvent, "done": DocumentEvent, "error": ErrorEvent},
                "`progress` events, then `done` at completed/failed; `error` on failure",
                'id: 1714564812345\nevent: progress\ndata: {"document_id":"0b9f1c52-…","status":"processing",…}\n\n')})
async def document_events(document_id: str, caller: CallerDep, state: StateDep) -> StreamingResponse:
    call = state.ingest.WatchDocument(ingest_pb2.WatchDocumentRequest(document_id=document_id),
                                      **state.options(caller, WATCH_TIMEOUT_SECONDS))
    first = await open_stream(call)
    return sse_response(relay(call, first, _progress_frames))
