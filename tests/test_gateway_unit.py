"""Gateway pieces that need no services: status mapping, SSE framing, the sign-in limiter, REST shapes,
the upload size guard, the file-types cache."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2

from docent.v1 import chat_pb2, ingest_pb2, retrieval_pb2
from services.gateway.errors import from_rpc
from services.gateway.middleware import MULTIPART_SLACK_BYTES, UploadLimitMiddleware
from services.gateway.routes_file_types import FileTypesCache
from services.gateway.schemas import ChatOut, DocumentEvent, DocumentOut, DocumentStatusOut, FileTypesOut
from services.gateway.signin_limit import SigninLimiter
from services.gateway.sse import event, with_heartbeat
from services.runtime.errors import build_status


def rpc_error(code: grpc.StatusCode, message: str = "boom", reason: str | None = None,
              **metadata: str) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason:
        for key, value in build_status(code, message, reason, metadata).trailing_metadata:
            trailing.add(key, value)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


@pytest.mark.parametrize(("code", "reason", "metadata", "http"), [
    (grpc.StatusCode.NOT_FOUND, "DOCUMENT_NOT_FOUND", {}, 404),
    (grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_FILE", {}, 400),
    (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_FILE_TYPE", {}, 415),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "FILE_TOO_LARGE", {"limit_bytes": "10"}, 413),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", {"retry_after_seconds": "7"}, 429),
    (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", {}, 401),
    (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", {}, 403),
    (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", {}, 409),
    (grpc.StatusCode.FAILED_PRECONDITION, "DIMENSION_MISMATCH", {}, 409),
    (grpc.StatusCode.UNAVAILABLE, "LLM_UNAVAILABLE", {}, 503),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", {}, 504),
    (grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", {}, 501),
    (grpc.StatusCode.INTERNAL, "INTERNAL", {}, 500),
])
def test_status_mapping_keeps_reason_and_message(code, reason, metadata, http) -> None:
    error = from_rpc(rpc_error(code, "the user-facing message", reason, **metadata))
    assert error.status_code == http
    assert error.reason == reason
    body = error.body()
    assert body["reason"] == reason
    if http == 500:
        assert body["detail"] == "internal error"  # never an upstream's internals
    else:
        assert body["detail"] == "the user-facing message"
    if http == 401:
        assert error.headers["WWW-Authenticate"] == "Bearer"
    if http == 429:
        assert error.headers["Retry-After"] == "7"


@pytest.mark.parametrize(("code", "http", "detail"), [
    (grpc.StatusCode.UNAVAILABLE, 503, "the upstream service is unavailable (restarting?); try again shortly"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "upstream deadline exceeded"),
    (grpc.StatusCode.UNKNOWN, 500, "internal error"),
])
def test_transport_failures_without_error_info_get_generic_text(code, http, detail) -> None:
    error = from_rpc(rpc_error(code, "failed to connect to all addresses; ipv4:127.0.0.1:1: Connection refused"))
    assert (error.status_code, error.detail) == (http, detail)
    assert "127.0.0.1" not in json.dumps(error.body(request_id="abc"))
    assert error.body(request_id="abc")["request_id"] == "abc"


def test_sse_frames_are_single_line_json() -> None:
    frame = event("token", {"delta": "line one\nline two"}, event_id="7")
    assert frame == b'id: 7\nevent: token\ndata: {"delta":"line one\\nline two"}\n\n'


async def test_heartbeat_fills_quiet_periods_and_closes_the_source() -> None:
    closed = asyncio.Event()

    async def source():
        try:
            yield b"a"
            await asyncio.sleep(0.25)
            yield b"b"
        finally:
            closed.set()

    frames = [frame async for frame in with_heartbeat(source(), interval=0.1)]
    assert frames[0] == b"a" and frames[-1] == b"b"
    assert frames.count(b": ping\n\n") >= 1
    assert closed.is_set()


async def test_heartbeat_stream_cancelled_by_client_cancels_the_source() -> None:
    cancelled = asyncio.Event()

    async def source():
        try:
            yield b"a"
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    stream = with_heartbeat(source(), interval=10)
    assert await stream.__anext__() == b"a"
    waiter = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await stream.aclose()
    assert cancelled.is_set()


def test_signin_limiter_blocks_after_five_failures_per_account() -> None:
    limiter = SigninLimiter(max_failures=5, window=60)
    for i in range(5):
        assert limiter.retry_after("a@x.org", now=100 + i) == 0
        limiter.failed("a@x.org", now=100 + i)
    assert limiter.retry_after("a@x.org", now=105) == 55  # until the oldest failure leaves the window
    assert limiter.retry_after("b@x.org", now=105) == 0  # per account
    assert limiter.retry_after("a@x.org", now=160.5) == 0  # window passed
    limiter.failed("a@x.org", now=200)
    limiter.succeeded("a@x.org")
    assert limiter.retry_after("a@x.org", now=200) == 0


def test_signin_limiter_memory_is_bounded() -> None:
    limiter = SigninLimiter(max_accounts=100)
    for i in range(1000):
        limiter.failed(f"user{i}@x.org", now=1.0)
    assert len(limiter._failures) == 100


def _document(status: int, **progress: int) -> ingest_pb2.Document:
    stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    return ingest_pb2.Document(
        id="d1", user_id="u1", filename="a.pdf", file_size=10, mime_type="application/pdf", status=status,
        task_id="t1", create_time=stamp, progress=ingest_pb2.DocumentProgress(**progress),
        vector_collection="docent_chunks" if status == ingest_pb2.DOCUMENT_STATUS_COMPLETED else "")


def test_document_json_has_the_seed_fields() -> None:
    body = DocumentOut.from_proto(_document(ingest_pb2.DOCUMENT_STATUS_PENDING, stage="queued")).model_dump()
    seed_fields = {"id", "user_id", "filename", "file_size", "mime_type", "vector_collection_id",
                   "processing_status", "processing_error", "task_id", "uploaded_at"}
    assert seed_fields <= body.keys()
    assert body["vector_collection_id"] is None and body["processing_error"] is None and body["error_reason"] is None
    assert body["processing_status"] == "pending" and body["uploaded_at"] == "2023-11-14T22:13:20Z"
    done = DocumentOut.from_proto(_document(ingest_pb2.DOCUMENT_STATUS_COMPLETED, stage="completed")).model_dump()
    assert done["vector_collection_id"] == "docent_chunks"


def test_status_progress_is_monotonic_over_the_stages() -> None:
    processing = ingest_pb2.DOCUMENT_STATUS_PROCESSING
    steps = [
        _document(ingest_pb2.DOCUMENT_STATUS_PENDING, stage="queued"),
        _document(processing, stage="parsing", pages_done=1, pages_total=40),
        _document(processing, stage="parsing", pages_done=40, pages_total=40),
        _document(processing, stage="chunking", pages_done=40, pages_total=40),
        _document(processing, stage="embedding", chunks_done=10, chunks_total=100),
        _document(processing, stage="embedding", chunks_done=100, chunks_total=100),
        _document(processing, stage="indexing"),
        _document(ingest_pb2.DOCUMENT_STATUS_COMPLETED, stage="completed"),
    ]
    bodies = [DocumentStatusOut.from_proto(document).model_dump() for document in steps]
    percents = [body["progress"]["percent"] for body in bodies]
    assert percents == sorted(percents) and percents[-1] == 100 and percents[0] < 5
    assert [body["task"]["task_state"] for body in bodies][::7] == ["PENDING", "SUCCESS"]
    assert bodies[1]["task"]["task_info"]["status"] == "Parsing page 1 of 40"
    assert bodies[4]["progress"]["message"] == "Embedding chunk 10 of 100"
    failed = DocumentStatusOut.from_proto(ingest_pb2.Document(
        id="d", status=ingest_pb2.DOCUMENT_STATUS_FAILED, error="password-protected",
        error_reason="PDF_ENCRYPTED")).model_dump()
    assert failed["error"] == "password-protected" and failed["task"]["task_state"] == "FAILURE"
    assert failed["error_reason"] == "PDF_ENCRYPTED" and bodies[-1]["error_reason"] is None


def test_turn_json_explain_view() -> None:
    turn = chat_pb2.ChatTurn(
        id="t", conversation_id="c", answer="Five [1].", chat_context_used=True,
        sources=[chat_pb2.Citation(marker=1, document_id="d", filename="a.pdf", chunk_index=3, page_start=2,
                                   page_end=2, relevance_score=0.5, snippet="five")],
        context=[retrieval_pb2.SearchResult(
                     source=retrieval_pb2.SEARCH_SOURCE_DOCUMENTS, score=0.5, weight=0.7, weighted_score=0.35,
                     rank=1, source_rank=1, text="five",
                     document=retrieval_pb2.DocumentChunkHit(document_id="d", filename="a.pdf", page_start=2)),
                 retrieval_pb2.SearchResult(
                     source=retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY, score=0.6, weight=0.3, weighted_score=0.18,
                     rank=2, source_rank=1, text="User: …",
                     chat_turn=retrieval_pb2.ChatTurnHit(turn_id="t0", conversation_id="c"))])
    plain = ChatOut.from_proto(turn).model_dump(exclude_unset=True)
    assert "context" not in plain
    assert plain["sources"][0] == {"document_id": "d", "filename": "a.pdf", "chunk_index": 3, "relevance_score": 0.5,
                                   "page_start": 2, "page_end": 2, "snippet": "five", "marker": 1, "cited": False}
    context = ChatOut.from_proto(turn, explain=True).model_dump()["context"]
    assert [(c["rank"], c["source"], c["weight"]) for c in context] == [(1, "documents", 0.7),
                                                                      (2, "chat_history", 0.3)]
    assert context[0]["document"]["page_start"] == 2 and context[1]["chat_turn"]["turn_id"] == "t0"


def test_sse_events_keep_nulls_and_leave_out_what_the_message_did_not_carry() -> None:
    """Pinned bytes: a third-party client parses these events."""
    document = _document(ingest_pb2.DOCUMENT_STATUS_PENDING, stage="queued")
    frame = event("progress", DocumentEvent.from_proto(document), "1")
    assert frame == (
        b'id: 1\nevent: progress\ndata: {"document_id":"d1","filename":"a.pdf","status":"pending","error":null,'
        b'"error_reason":null,"task":{"task_id":"t1","task_state":"PENDING","task_info":{"status":"Queued",'
        b'"stage":"queued","percent":2}},"progress":{"stage":"queued","pages_done":0,"pages_total":0,'
        b'"chunks_done":0,"chunks_total":0,"attempts":0,"percent":2,"message":"Queued"},'
        b'"vector_collection_id":null,"page_count":0,"chunk_count":0,"version":1,"pending_version":null,'
        b'"versions":[],"document":{"id":"d1","user_id":"u1",'
        b'"filename":"a.pdf","file_size":10,"mime_type":"application/pdf","vector_collection_id":null,'
        b'"processing_status":"pending","processing_error":null,"error_reason":null,"task_id":"t1",'
        b'"uploaded_at":"2023-11-14T22:13:20Z","updated_at":null,"indexed_at":null,"page_count":0,'
        b'"chunk_count":0,"sha256":"","progress":{"stage":"queued","pages_done":0,"pages_total":0,'
        b'"chunks_done":0,"chunks_total":0,"attempts":0,"percent":2,"message":"Queued"},'
        # fields added since the seed (versions, collections) come after the seed's, in both objects
        b'"version":1,"pending_version":null,"versions":[],"collection_id":null}}\n\n')
    citation = chat_pb2.Citation(marker=1, document_id="d", filename="a.pdf", chunk_index=3, chunk_index_end=4,
                                 relevance_score=0.25, cited=True)
    turn = chat_pb2.ChatTurn(id="t", conversation_id="c", answer="Five [1].",
                             timings=chat_pb2.TurnTimings(total_ms=1.5), sources=[citation])
    assert event("done", ChatOut.from_proto(turn)) == (
        b'event: done\ndata: {"answer":"Five [1].","sources":[{"document_id":"d","filename":"a.pdf","chunk_index":3,'
        b'"relevance_score":0.25,"page_start":0,"page_end":0,"snippet":"","marker":1,"cited":true}],'
        b'"conversation_id":"c","chat_context_used":false,"turn_id":"t","query":"","standalone_query":"",'
        b'"model":"","created_at":null,"timings":{"retrieval_ms":0.0,"answer_ms":0.0,"storage_ms":0.0,'
        b'"total_ms":1.5},"memory_indexed":false}\n\n')


async def _echo_app(scope, receive, send) -> None:
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"received": size}).encode()
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("chunked", [False, True])
async def test_upload_guard_rejects_oversize_bodies(chunked: bool) -> None:
    app = UploadLimitMiddleware(_echo_app, max_bytes=1000)
    limit = 1000 + MULTIPART_SLACK_BYTES

    def body(size: int):
        if not chunked:
            return b"x" * size

        async def parts():
            for start in range(0, size, 4096):
                yield b"x" * min(4096, size - start)

        return parts()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        ok = await client.post("/api/upload/", content=body(limit))
        assert (ok.status_code, ok.json()) == (202, {"received": limit})
        too_big = await client.post("/api/upload/", content=body(limit + 1))
        assert too_big.status_code == 413
        assert too_big.json() == {"detail": "file is larger than the 1000 byte limit", "reason": "FILE_TOO_LARGE"}
        other = await client.post("/api/chat/", content=body(limit + 1))
        assert other.status_code == 202  # only uploads are guarded


def _file_types() -> ingest_pb2.ListFileTypesResponse:
    return ingest_pb2.ListFileTypesResponse(file_types=[
        ingest_pb2.FileType(mime_type="application/pdf", label="PDF", extensions=[".pdf"]),
        ingest_pb2.FileType(mime_type="text/markdown", label="MD", extensions=[".md", ".markdown"])])


def test_file_types_json() -> None:
    assert FileTypesOut.from_proto(_file_types()).model_dump() == {"file_types": [
        {"mime_type": "application/pdf", "label": "PDF", "extensions": [".pdf"]},
        {"mime_type": "text/markdown", "label": "MD", "extensions": [".md", ".markdown"]}]}


async def test_file_types_cache_keeps_an_answer_for_its_ttl_and_never_a_failure() -> None:
    now = [0.0]
    cache = FileTypesCache(60, clock=lambda: now[0])
    calls = 0

    async def fetch() -> FileTypesOut:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return FileTypesOut.from_proto(_file_types())

    async def broken() -> FileTypesOut:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())

    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get(broken)
    answers = await asyncio.gather(*(cache.get(fetch) for _ in range(5)))  # concurrent misses: one call
    assert calls == 1 and all(answer is answers[0] for answer in answers)
    now[0] = 59.0
    assert await cache.get(broken) is answers[0] and calls == 1
    now[0] = 61.0
    with pytest.raises(grpc.aio.AioRpcError):
        await cache.get(broken)  # expired, and the failure is not kept
    assert (await cache.get(fetch)) == answers[0] and calls == 2
