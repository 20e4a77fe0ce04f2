"""REST shapes (the seed's field names) and their conversion from the docent.v1 messages, written once.

Each response model converts its proto with `from_proto`; the JSON routes return the models and the
SSE events send the same models (services.gateway.sse.event). A field a conversion leaves unset is
absent from an SSE event (an upload's `deduplicated`, `context` without explain), as in the JSON
of the routes, which drop null fields where the route says so (`response_model_exclude_none`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from google.protobuf import timestamp_pb2
from pydantic import BaseModel, Field

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


def iso(stamp: timestamp_pb2.Timestamp) -> str | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


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
    uploaded_at: str | None
    updated_at: str | None = None
    indexed_at: str | None = None
    page_count: int = 0
    chunk_count: int = 0
    sha256: str = ""
    progress: Progress | None = None
    deduplicated: bool | None = Field(None, description="upload only: the same bytes were already uploaded")

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
            progress=Progress.from_proto(document))

    @classmethod
    def from_upload(cls, reply: ingest_pb2.UploadDocumentResponse) -> DocumentOut:
        uploaded = cls.from_proto(reply.document)
        uploaded.deduplicated = reply.deduplicated
        return uploaded


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
            page_count=document.page_count, chunk_count=document.chunk_count)


class DocumentEvent(DocumentStatusOut):
    """The data of a `progress`/`done` event of GET /api/upload/{id}/events: the status and the document."""

    document: DocumentOut

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
    conversation_id: str | None = None
    explain: bool = Field(False, description="include the merged retrieval context (source, score, weight, rank)")
    weights: Weights | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    document_ids: list[str] | None = Field(None, max_length=100)
    mode: Literal["dense", "hybrid"] | None = None

    def options(self) -> chat_pb2.ChatOptions:
        options = chat_pb2.ChatOptions(conversation_id=self.conversation_id or "", top_k=self.top_k or 0,
                                       document_ids=self.document_ids or [])
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


class ContextItem(BaseModel):
    rank: int
    source: Literal["documents", "chat_history"]
    score: float
    weight: float
    weighted_score: float
    source_rank: int
    text: str
    # plain dicts, not models: a null inside them (chat_turn.created_at) is kept even where a route drops nulls
    document: dict[str, Any] | None = None
    chat_turn: dict[str, Any] | None = None

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


class ChatOut(BaseModel):
    answer: str
    sources: list[SourceOut]
    conversation_id: str
    chat_context_used: bool
    turn_id: str
    query: str
    standalone_query: str
    model: str
    created_at: str | None
    timings: dict[str, float]
    memory_indexed: bool = False
    context: list[ContextItem] | None = None

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


class ConversationOut(BaseModel):
    id: str
    title: str
    turn_count: int
    created_at: str | None
    updated_at: str | None
    turns: list[ChatOut] | None = None

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
