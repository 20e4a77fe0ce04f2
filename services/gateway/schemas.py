"""REST shapes (the seed's field names) and their conversion from the docent.v1 messages, written once.

Each response model converts its proto with `from_proto`; the JSON routes return the models and the
SSE events send the same models (services.gateway.sse.event). A field a conversion leaves unset is
absent from an SSE event (an upload's `deduplicated`, `context` without explain), as in the JSON
of the routes, which drop null fields where the route says so (`response_model_exclude_none`).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from google.protobuf import timestamp_pb2
from pydantic import BaseModel, Field, WithJsonSchema

from docent.v1 import chat_pb2, ingest_pb2, retrieval_pb2
from services.runtime.names import MAX_QUERY_CHARS

STATUS_NAMES: dict[int, DocumentStatus] = {
    ingest_pb2.DOCUMENT_STATUS_PENDING: "pending",
    ingest_pb2.DOCUMENT_STATUS_PROCESSING: "processing",
    ingest_pb2.DOCUMENT_STATUS_COMPLETED: "completed",
    ingest_pb2.DOCUMENT_STATUS_FAILED: "failed",
}
DocumentStatus = Literal["pending", "processing", "completed", "failed"]
TERMINAL = frozenset({"completed", "failed"})
# Celery-style task states, as the seed reported them
TASK_STATES = {"pending": "PENDING", "processing": "STARTED", "completed": "SUCCESS", "failed": "FAILURE"}
SOURCE_NAMES = {retrieval_pb2.SEARCH_SOURCE_DOCUMENTS: "documents",
                retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY: "chat_history"}
MODES = {"dense": retrieval_pb2.SEARCH_MODE_DENSE, "hybrid": retrieval_pb2.SEARCH_MODE_HYBRID}


# An RFC 3339 UTC time as `iso` writes it ("2024-05-01T12:00:00.123456Z", no fraction when it is zero). A str
# rather than a datetime, so that the JSON stays exactly what it has been; the schema says `date-time`.
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time",
                                           "examples": ["2024-05-01T12:00:00.123456Z"]})]


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def iso(stamp: timestamp_pb2.Timestamp) -> str | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


# errors ----------------------------------------------------------------------------------------

class ErrorOut(BaseModel):
    """Every error the gateway answers: services.gateway.errors.ApiError's body."""

    detail: str = Field(description="a user-facing message")
    reason: str = Field(description="a stable UPPER_SNAKE code to branch on (TOKEN_EXPIRED, DOCUMENT_NOT_FOUND, "
                                    "FILE_TOO_LARGE, UPSTREAM_UNAVAILABLE, ...)")
    request_id: str | None = Field(None, description="5xx only: the request id to quote when reporting it")

    model_config = {"json_schema_extra": {"examples": [
        {"detail": "document not found", "reason": "DOCUMENT_NOT_FOUND"},
        {"detail": "internal error", "reason": "INTERNAL", "request_id": "4f1c2b7e9a0d4c55b8e3a1f2d6c7b8e9"}]}}


class ValidationIssue(BaseModel):
    """One invalid part of a request, as FastAPI/Pydantic report it."""

    loc: list[str | int] = Field(description='where: ["body", "query"], ["query", "limit"], ...')
    msg: str
    type: str = Field(description="the Pydantic error type, e.g. missing, string_too_short")
    input: Any = Field(None, description="the value that was refused")
    ctx: dict[str, Any] | None = Field(None, description="the constraint, e.g. {\"min_length\": 1}")


class ValidationErrorOut(BaseModel):
    """422: the request does not match the operation's parameters or body."""

    detail: list[ValidationIssue]
    reason: Literal["VALIDATION_ERROR"]

    model_config = {"json_schema_extra": {"examples": [{
        "detail": [{"type": "string_too_short", "loc": ["body", "query"], "msg": "String should have at least 1 "
                    "character", "input": "", "ctx": {"min_length": 1}}],
        "reason": "VALIDATION_ERROR"}]}}


class ErrorEvent(BaseModel):
    """The data of an SSE `error` event: a failure after the stream started (its HTTP status is already 200)."""

    detail: str
    reason: str
    status: int = Field(description="the HTTP status the error would have had")

    model_config = {"json_schema_extra": {"examples": [
        {"detail": "the chat service is unavailable (restarting?); try again shortly",
         "reason": "UPSTREAM_UNAVAILABLE", "status": 503}]}}


# documents -------------------------------------------------------------------------------------

def _percent(status: str, progress: ingest_pb2.DocumentProgress) -> int:
    if status == "completed":
        return 100
    stage = progress.stage
    if stage == "parsing" and progress.pages_total:
        return 5 + int(35 * progress.pages_done / progress.pages_total)
    if stage == "chunking":
        return 42
    if stage == "embedding" and progress.chunks_total:
        return 45 + int(50 * progress.chunks_done / progress.chunks_total)
    return {"queued": 2, "parsing": 5, "embedding": 45, "indexing": 96}.get(stage, 0)


def _message(status: str, document: ingest_pb2.Document) -> str:
    progress = document.progress
    if status == "failed":
        return f"Failed: {document.error}" if document.error else "Failed"
    if status == "completed":
        return f"Indexed {document.chunk_count} chunks from {document.page_count} pages"
    stage = progress.stage or "queued"
    if stage == "parsing" and progress.pages_total:
        return f"Parsing page {progress.pages_done} of {progress.pages_total}"
    if stage == "embedding" and progress.chunks_total:
        return f"Embedding chunk {progress.chunks_done} of {progress.chunks_total}"
    return {"queued": "Queued", "chunking": "Chunking", "indexing": "Indexing"}.get(stage, stage.capitalize())


def status_name(document: ingest_pb2.Document) -> DocumentStatus:
    return STATUS_NAMES.get(document.status, "pending")


class Progress(BaseModel):
    stage: str
    pages_done: int
    pages_total: int
    chunks_done: int
    chunks_total: int
    attempts: int
    percent: int = Field(description="0-100, an estimate over the stages")
    message: str

    @classmethod
    def from_proto(cls, document: ingest_pb2.Document) -> Progress:
        status = status_name(document)
        p = document.progress
        return cls(stage=p.stage or "queued", pages_done=p.pages_done, pages_total=p.pages_total,
                   chunks_done=p.chunks_done, chunks_total=p.chunks_total, attempts=p.attempts,
                   percent=_percent(status, p), message=_message(status, document))


REASON_DESCRIPTION = ("failed only: a stable code for the error (e.g. PDF_ENCRYPTED, PDF_INVALID, NO_TEXT, "
                      "RETRIES_EXHAUSTED, WORKER_LOST); null otherwise")


_DOCUMENT_EXAMPLE: dict[str, Any] = {
    "id": "0b9f1c52-4c1e-4a53-9a43-2f7d1f6c9e10", "user_id": "5d2e8f8a-1b7c-4a0e-8f5e-3c9d2a1b0c4d",
    "filename": "R-data_41p.pdf", "file_size": 412345, "mime_type": "application/pdf",
    "vector_collection_id": None, "processing_status": "pending", "processing_error": None,
    "error_reason": None, "task_id": "1c7a4e0e-2f0b-4d6a-9c51-7d8e9f0a1b2c",
    "uploaded_at": "2024-05-01T12:00:00.123456Z", "updated_at": "2024-05-01T12:00:00.123456Z",
    "indexed_at": None, "page_count": 0, "chunk_count": 0,
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "progress": {"stage": "queued", "pages_done": 0, "pages_total": 0, "chunks_done": 0, "chunks_total": 0,
                 "attempts": 0, "percent": 2, "message": "Queued"},
    "deduplicated": False}
_STATUS_EXAMPLE: dict[str, Any] = {
    "document_id": "0b9f1c52-4c1e-4a53-9a43-2f7d1f6c9e10", "filename": "R-data_41p.pdf",
    "status": "processing", "error": None, "error_reason": None,
    "task": {"task_id": "1c7a4e0e-2f0b-4d6a-9c51-7d8e9f0a1b2c", "task_state": "STARTED",
             "task_info": {"status": "Parsing page 12 of 41", "stage": "parsing", "percent": 15}},
    "progress": {"stage": "parsing", "pages_done": 12, "pages_total": 41, "chunks_done": 0,
                 "chunks_total": 0, "attempts": 1, "percent": 15, "message": "Parsing page 12 of 41"},
    "vector_collection_id": None, "page_count": 0, "chunk_count": 0}


class DocumentVersionOut(BaseModel):
    """One version of a document's file and what became of it."""

    version: int = Field(description="1 for the original upload, then 2, 3, ... for each replacement")
    sha256: str
    file_size: int
    filename: str
    mime_type: str
    status: DocumentStatus = Field(description="pending/processing while processed; completed once indexed; failed")
    error: str | None
    error_reason: str | None = Field(None, description=REASON_DESCRIPTION)
    created_at: Timestamp | None
    indexed_at: Timestamp | None
    active: bool = Field(description="the version search returns chunks of")

    @classmethod
    def from_proto(cls, version: ingest_pb2.DocumentVersion) -> DocumentVersionOut:
        return cls(version=version.version, sha256=version.sha256, file_size=version.file_size,
                   filename=version.filename, mime_type=version.mime_type,
                   status=STATUS_NAMES.get(version.status, "pending"), error=version.error or None,
                   error_reason=version.error_reason or None, created_at=iso(version.create_time),
                   indexed_at=iso(version.index_time), active=version.active)


VERSION_DESCRIPTION = "the active (searchable) version: 1 for an original upload"
PENDING_VERSION_DESCRIPTION = ("the version a replacement is processing (status and progress then describe it; "
                               "the active version stays searchable), null when none")
VERSIONS_DESCRIPTION = "every version of the document, oldest first"


class DocumentOut(BaseModel):
    id: str
    user_id: str
    filename: str
    file_size: int
    mime_type: str
    vector_collection_id: str | None = Field(description="null until the document is searchable")
    processing_status: DocumentStatus
    processing_error: str | None
    error_reason: str | None = Field(None, description=REASON_DESCRIPTION)
    task_id: str | None
    uploaded_at: Timestamp | None
    updated_at: Timestamp | None = None
    indexed_at: Timestamp | None = None
    page_count: int = 0
    chunk_count: int = 0
    sha256: str = ""
    progress: Progress | None = None
    deduplicated: bool | None = Field(None, description="upload only: the same bytes were already uploaded")
    version: int = Field(1, description=VERSION_DESCRIPTION)
    pending_version: int | None = Field(None, description=PENDING_VERSION_DESCRIPTION)
    versions: list[DocumentVersionOut] = Field(default_factory=list, description=VERSIONS_DESCRIPTION)
    collection_id: str | None = Field(None, description="the collection the document lives in (GET /api/collections)")

    model_config = {"json_schema_extra": {"examples": [_DOCUMENT_EXAMPLE]}}

    @classmethod
    def from_proto(cls, document: ingest_pb2.Document) -> DocumentOut:
        return cls(
            id=document.id, user_id=document.user_id, filename=document.filename,
            file_size=document.file_size, mime_type=document.mime_type,
            vector_collection_id=document.vector_collection or None, processing_status=status_name(document),
            processing_error=document.error or None, error_reason=document.error_reason or None,
            task_id=document.task_id or None, uploaded_at=iso(document.create_time),
            updated_at=iso(document.update_time), indexed_at=iso(document.index_time),
            page_count=document.page_count, chunk_count=document.chunk_count, sha256=document.sha256,
            progress=Progress.from_proto(document), version=document.version or 1,
            pending_version=document.pending_version or None,
            versions=[DocumentVersionOut.from_proto(version) for version in document.versions],
            collection_id=document.collection_id or None)

    @classmethod
    def from_upload(cls, reply: ingest_pb2.UploadDocumentResponse) -> DocumentOut:
        uploaded = cls.from_proto(reply.document)
        uploaded.deduplicated = reply.deduplicated
        return uploaded

    @classmethod
    def from_replace(cls, reply: ingest_pb2.ReplaceDocumentResponse) -> DocumentOut:
        replaced = cls.from_proto(reply.document)
        replaced.deduplicated = reply.deduplicated
        return replaced


class TaskInfo(BaseModel):
    status: str
    stage: str
    percent: int


class Task(BaseModel):
    task_id: str | None
    task_state: str
    task_info: TaskInfo


class DocumentStatusOut(BaseModel):
    document_id: str
    filename: str
    status: DocumentStatus
    error: str | None
    error_reason: str | None = Field(None, description=REASON_DESCRIPTION)
    task: Task
    progress: Progress
    vector_collection_id: str | None
    page_count: int
    chunk_count: int
    version: int = Field(1, description=VERSION_DESCRIPTION)
    pending_version: int | None = Field(None, description=PENDING_VERSION_DESCRIPTION)
    versions: list[DocumentVersionOut] = Field(default_factory=list, description=VERSIONS_DESCRIPTION)

    model_config = {"json_schema_extra": {"examples": [_STATUS_EXAMPLE]}}

    @classmethod
    def from_proto(cls, document: ingest_pb2.Document) -> DocumentStatusOut:
        status = status_name(document)
        progress = Progress.from_proto(document)
        return cls(
            document_id=document.id, filename=document.filename, status=status,
            error=document.error or None, error_reason=document.error_reason or None,
            task=Task(task_id=document.task_id or None, task_state=TASK_STATES[status],
                      task_info=TaskInfo(status=progress.message, stage=progress.stage, percent=progress.percent)),
            progress=progress, vector_collection_id=document.vector_collection or None,
            page_count=document.page_count, chunk_count=document.chunk_count, version=document.version or 1,
            pending_version=document.pending_version or None,
            versions=[DocumentVersionOut.from_proto(version) for version in document.versions],
            collection_id=document.collection_id or None)


class DocumentEvent(DocumentStatusOut):
    """The data of a `progress`/`done` event of GET /api/upload/{id}/events: the status and the document."""

    document: DocumentOut

    # an event's document has no `deduplicated` (upload only)
    model_config = {"json_schema_extra": {"examples": [{**_STATUS_EXAMPLE, "document": {
        **{name: value for name, value in _DOCUMENT_EXAMPLE.items() if name != "deduplicated"},
        "processing_status": "processing", "progress": _STATUS_EXAMPLE["progress"]}}]}}

    @classmethod
    def from_proto(cls, document: ingest_pb2.Document) -> DocumentEvent:
        status = DocumentStatusOut.from_proto(document)
        return cls(**{name: getattr(status, name) for name in status.model_fields_set},
                   document=DocumentOut.from_proto(document))


class FileTypeOut(BaseModel):
    """One file type uploads may have, as the ingest service's format registry declares it."""

    mime_type: str = Field(description="the canonical MIME type, as in a document's `mime_type`")
    label: str = Field(description='how users see it, e.g. "PDF"')
    extensions: list[str] = Field(description='lower case with the leading dot (".pdf"); the first is the canonical '
                                              "one")

    @classmethod
    def from_proto(cls, file_type: ingest_pb2.FileType) -> FileTypeOut:
        return cls(mime_type=file_type.mime_type, label=file_type.label, extensions=list(file_type.extensions))


class FileTypesOut(BaseModel):
    """GET /api/file-types: what the upload picker offers."""

    file_types: list[FileTypeOut] = Field(description="in the registry's order")

    @classmethod
    def from_proto(cls, reply: ingest_pb2.ListFileTypesResponse) -> FileTypesOut:
        return cls(file_types=[FileTypeOut.from_proto(file_type) for file_type in reply.file_types])


# chat --------------------------------------------------------------------------------------------

class Weights(BaseModel):
    documents: float | None = Field(None, ge=0, le=1)
    chat_history: float | None = Field(None, ge=0, le=1)


class ChatIn(BaseModel):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    conversation_id: str | None = Field(None, description="continue this conversation; a new one when absent")
    explain: bool = Field(False, description="include the merged retrieval context (source, score, weight, rank)")
    weights: Weights | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    document_ids: list[str] | None = Field(None, max_length=100, description="search only these documents")
    collection_ids: list[str] | None = Field(
        None, max_length=100, description="search only these collections' documents (the caller must belong to "
                                          "each); all the caller's collections when absent. Chat memory is the "
                                          "caller's own either way")
    mode: Literal["dense", "hybrid"] | None = None

    model_config = {"json_schema_extra": {"examples": [
        {"query": "Which Stata file versions can read.dta handle?", "explain": True},
        {"query": "and SPSS?", "conversation_id": "8a0c3e57-6d1f-4b2a-9e4c-1f2d3e4a5b6c", "top_k": 8,
         "mode": "hybrid", "weights": {"documents": 0.7, "chat_history": 0.3}}]}}

    def options(self) -> chat_pb2.ChatOptions:
        options = chat_pb2.ChatOptions(conversation_id=self.conversation_id or "", top_k=self.top_k or 0,
                                       document_ids=self.document_ids or [], collection_ids=self.collection_ids or [])
        if self.weights is not None:
            if self.weights.documents is not None:
                options.weights.documents = self.weights.documents
            if self.weights.chat_history is not None:
                options.weights.chat_history = self.weights.chat_history
        if self.mode:
            options.mode = MODES[self.mode]
        return options


class SourceOut(BaseModel):
    document_id: str
    filename: str
    chunk_index: int
    relevance_score: float
    page_start: int
    page_end: int
    snippet: str
    marker: int
    cited: bool = Field(False, description="the answer cites this passage as [marker]; the other sources are the "
                                           "rest of the context it was given, in rank order")

    @classmethod
    def from_proto(cls, citation: chat_pb2.Citation) -> SourceOut:
        return cls(document_id=citation.document_id, filename=citation.filename, chunk_index=citation.chunk_index,
                   relevance_score=round(citation.relevance_score, 6), page_start=citation.page_start,
                   page_end=citation.page_end, snippet=citation.snippet, marker=citation.marker,
                   cited=citation.cited)


class ContextDocument(BaseModel):
    """`document` of a context item whose source is `documents`."""

    document_id: str
    filename: str
    chunk_index: int
    page_start: int
    page_end: int


class ContextChatTurn(BaseModel):
    """`chat_turn` of a context item whose source is `chat_history`: an earlier turn recalled from memory."""

    turn_id: str
    conversation_id: str
    created_at: Timestamp | None = Field(description="null when unknown (kept as null, never dropped)")
    user_message: str
    assistant_message: str


class ContextItem(BaseModel):
    rank: int
    source: Literal["documents", "chat_history"]
    score: float
    weight: float
    weighted_score: float
    source_rank: int
    text: str
    # plain dicts, not models: a null inside them (chat_turn.created_at) is kept even where a route drops nulls;
    # their schema is ContextDocument / ContextChatTurn (added to the OpenAPI components by services.gateway.app)
    document: Annotated[dict[str, Any], WithJsonSchema(schema_ref("ContextDocument"))] | None = None
    chat_turn: Annotated[dict[str, Any], WithJsonSchema(schema_ref("ContextChatTurn"))] | None = None

    @classmethod
    def from_proto(cls, result: retrieval_pb2.SearchResult) -> ContextItem:
        item = cls(rank=result.rank, source=SOURCE_NAMES.get(result.source, "documents"),
                   score=round(result.score, 6), weight=round(result.weight, 6),
                   weighted_score=round(result.weighted_score, 6), source_rank=result.source_rank, text=result.text)
        if result.HasField("document"):
            hit = result.document
            item.document = {"document_id": hit.document_id, "filename": hit.filename,
                             "chunk_index": hit.chunk_index, "page_start": hit.page_start, "page_end": hit.page_end}
        elif result.HasField("chat_turn"):
            turn = result.chat_turn
            item.chat_turn = {"turn_id": turn.turn_id, "conversation_id": turn.conversation_id,
                              "created_at": iso(turn.create_time), "user_message": turn.user_message,
                              "assistant_message": turn.assistant_message}
        return item


class Timings(BaseModel):
    """Where the time of a turn went, in milliseconds."""

    retrieval_ms: float
    answer_ms: float
    storage_ms: float
    total_ms: float


class ChatOut(BaseModel):
    answer: str
    sources: list[SourceOut]
    conversation_id: str
    chat_context_used: bool
    turn_id: str
    query: str
    standalone_query: str
    model: str
    created_at: Timestamp | None
    timings: Timings
    memory_indexed: bool = False
    context: list[ContextItem] | None = Field(None, description="with `explain` only")

    model_config = {"json_schema_extra": {"examples": [{
        "answer": "read.dta handles Stata versions 5 to 12 [1].",
        "sources": [{"document_id": "0b9f1c52-4c1e-4a53-9a43-2f7d1f6c9e10", "filename": "R-data_41p.pdf",
                     "chunk_index": 37, "relevance_score": 0.812345, "page_start": 14, "page_end": 14,
                     "snippet": "Function read.dta reads a file written by Stata versions 5 to 12", "marker": 1,
                     "cited": True}],
        "conversation_id": "8a0c3e57-6d1f-4b2a-9e4c-1f2d3e4a5b6c", "chat_context_used": False,
        "turn_id": "3e2d1c0b-9a8f-4e7d-8c6b-5a4f3e2d1c0b",
        "query": "Which Stata file versions can read.dta handle?",
        "standalone_query": "Which Stata file versions can read.dta handle?", "model": "extractive",
        "created_at": "2024-05-01T12:00:03.456789Z",
        "timings": {"retrieval_ms": 41.2, "answer_ms": 3.1, "storage_ms": 5.7, "total_ms": 50.4},
        "memory_indexed": False}]}}

    @classmethod
    def from_proto(cls, turn: chat_pb2.ChatTurn, explain: bool = False) -> ChatOut:
        timings = turn.timings
        out = cls(
            answer=turn.answer, sources=[SourceOut.from_proto(c) for c in turn.sources],
            conversation_id=turn.conversation_id, chat_context_used=turn.chat_context_used, turn_id=turn.id,
            query=turn.query, standalone_query=turn.standalone_query, model=turn.model,
            created_at=iso(turn.create_time),
            timings={"retrieval_ms": timings.retrieval_ms, "answer_ms": timings.answer_ms,
                     "storage_ms": timings.storage_ms, "total_ms": timings.total_ms},
            memory_indexed=turn.memory_indexed)
        if explain:
            out.context = [ContextItem.from_proto(result) for result in turn.context]
        return out


class ChatSourcesEvent(BaseModel):
    """The data of the `sources` event of POST /api/chat/stream (before `done`, which is the whole turn)."""

    sources: list[SourceOut]
    chat_context_used: bool
    conversation_id: str

    @classmethod
    def from_turn(cls, turn: ChatOut) -> ChatSourcesEvent:
        return cls(sources=turn.sources, chat_context_used=turn.chat_context_used,
                   conversation_id=turn.conversation_id)


class ChatConversationEvent(BaseModel):
    """The data of the `conversation` event of POST /api/chat/stream (first, once): the turn's conversation."""

    conversation_id: str


class ChatTokenEvent(BaseModel):
    """The data of a `token` event of POST /api/chat/stream: the next piece of the answer."""

    delta: str


class ConversationOut(BaseModel):
    id: str
    title: str
    turn_count: int
    created_at: Timestamp | None
    updated_at: Timestamp | None
    turns: list[ChatOut] | None = Field(None, description="GET /api/chat/conversations/{id} only")

    model_config = {"json_schema_extra": {"examples": [{
        "id": "8a0c3e57-6d1f-4b2a-9e4c-1f2d3e4a5b6c", "title": "Which Stata file versions can read.dta handle?",
        "turn_count": 2, "created_at": "2024-05-01T12:00:03.456789Z", "updated_at": "2024-05-01T12:01:10.500000Z"}]}}

    @classmethod
    def from_proto(cls, conversation: chat_pb2.Conversation, with_turns: bool = False,
                   explain: bool = False) -> ConversationOut:
        out = cls(id=conversation.id, title=conversation.title, turn_count=conversation.turn_count,
                  created_at=iso(conversation.create_time), updated_at=iso(conversation.update_time))
        if with_turns:
            out.turns = [ChatOut.from_proto(turn, explain) for turn in conversation.turns]
        return out


class ConversationList(BaseModel):
    conversations: list[ConversationOut]
    next_page_token: str | None

    @classmethod
    def from_proto(cls, reply: chat_pb2.ListConversationsResponse) -> ConversationList:
        return cls(conversations=[ConversationOut.from_proto(c) for c in reply.conversations],
                   next_page_token=reply.next_page_token or None)


# ops ---------------------------------------------------------------------------------------------

class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready", "degraded"]
    upstreams: dict[str, str] = Field(description="ingest, chat and database: SERVING or why not")
    children: dict[str, str] | None = Field(None, description="under `docent up`: the state of every role")
    restarting: list[str] | None = Field(None, description="under `docent up`: the roles being restarted")


# OpenAPI -----------------------------------------------------------------------------------------

def sse_openapi(events: dict[str, type[BaseModel]], description: str, example: str) -> dict[str, Any]:
    """The documented 200 of an SSE route: each event's name and the schema of its JSON `data`
    (`x-sse-events`), and their union as the stream's schema."""
    names = list(dict.fromkeys(model.__name__ for model in events.values()))
    return {"description": description, "content": {"text/event-stream": {
        "schema": {"description": "the JSON `data` of one event; which schema goes with which event name is in "
                                  "x-sse-events", "oneOf": [schema_ref(name) for name in names]},
        "x-sse-events": {event: schema_ref(model.__name__) for event, model in events.items()},
        "example": example}}}


# models the OpenAPI document refers to that no route returns as JSON (SSE data, the dicts of ContextItem):
# services.gateway.app adds them to the components
EXTRA_SCHEMAS: list[type[BaseModel]] = [ContextDocument, ContextChatTurn, DocumentEvent, ErrorEvent,
                                        ChatConversationEvent, ChatTokenEvent, ChatSourcesEvent, ChatOut]
