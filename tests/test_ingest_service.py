"""Ingestion end to end: real gRPC services, a real `docent worker`, embedded Postgres/Redis/qdrant-edge."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import grpc
import pytest

from docent.v1 import ingest_pb2, retrieval_pb2
from services.ingest.cli import describe
from services.runtime.errors import error_info
from tests.conftest import TESTDATA, auth, make_settings
from tests.ingest_harness import STATUS, ingest_stack

COMPLETED, FAILED = ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED
WEBHOOK_SECRET = "hook-secret"


@pytest.fixture(scope="module")
async def stack(backing, embedder):
    from tests.conftest import create_database

    settings = make_settings(backing, database_url=await create_database(backing.database_url),
                             lease_seconds=10, sweep_interval_seconds=1, webhook_secret=WEBHOOK_SECRET,
                             webhook_allow_private=True)  # the test's receiver listens on loopback
    async with ingest_stack(settings, embedder) as running:
        worker = running.worker().start()
        try:
            yield running, worker
        finally:
            worker.stop()


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def text_document(topic: str, paragraphs: int = 6) -> bytes:
    body = [f"# Notes on {topic}"]
    for number in range(paragraphs):
        body.append(f"Paragraph {number} about {topic}. The {topic} figure for period {number} was {number * 7} units. "
                    f"Analysts noted that {topic} depends on many factors, including season and demand.")
    return "\n\n".join(body).encode()


async def test_upload_is_acknowledged_then_completed_and_searchable(stack) -> None:
    running, worker = stack
    owner = user()
    content = (TESTDATA / "R-data_41p.pdf").read_bytes()
    reply = await running.upload(owner, "R-data_41p.pdf", content, "application/pdf")
    assert reply.document.status == ingest_pb2.DOCUMENT_STATUS_PENDING and not reply.deduplicated
    assert reply.document.sha256 == hashlib.sha256(content).hexdigest()
    assert reply.document.vector_collection == ""  # not searchable yet

    done = (await running.wait_terminal(owner, [reply.document.id], timeout=240, worker=worker))[reply.document.id]
    assert done.status == COMPLETED, done.error
    assert done.page_count == 41 and done.chunk_count > 41
    assert done.vector_collection and done.HasField("index_time")
    assert await running.stored_chunks(owner, done.id) == done.chunk_count

    result = await running.retrieval.Search(retrieval_pb2.SearchRequest(
        query="Which Stata file versions can read.dta and write.dta handle?", top_k=5), metadata=auth(owner),
        timeout=30)
    documents = [item for item in result.results if item.source == retrieval_pb2.SEARCH_SOURCE_DOCUMENTS]
    assert documents and documents[0].document.document_id == done.id
    pages = {page for item in documents[:3] for page in range(item.document.page_start, item.document.page_end + 1)}
    assert 20 in pages, [(item.document.page_start, item.text[:60]) for item in documents]


async def test_watch_streams_progress_in_order_until_terminal(stack) -> None:
    running, _ = stack
    owner = user()
    reply = await running.upload(owner, "notes.md", text_document("watching", 40))
    events = []
    async for event in running.ingest.WatchDocument(
            ingest_pb2.WatchDocumentRequest(document_id=reply.document.id), metadata=auth(owner), timeout=120):
        events.append(event.document)
    assert events[-1].status == COMPLETED, events[-1].error
    order = {"queued": 0, "parsing": 1, "chunking": 2, "embedding": 3, "indexing": 4, "completed": 5}
    stages = [order[event.progress.stage] for event in events]
    assert stages == sorted(stages), [event.progress.stage for event in events]
    chunk_counts = [event.progress.chunks_done for event in events if event.progress.stage == "embedding"]
    assert chunk_counts == sorted(chunk_counts)
    assert describe(events[-1]).startswith("completed")


async def test_same_bytes_again_return_the_existing_document(stack) -> None:
    running, worker = stack
    owner = user()
    content = text_document("dedup")
    first = await running.upload(owner, "a.txt", content)
    second = await running.upload(owner, "renamed.txt", content)
    assert second.deduplicated and second.document.id == first.document.id
    other = await running.upload(user(), "a.txt", content)  # another user's copy is their own
    assert not other.deduplicated and other.document.id != first.document.id
    await running.wait_terminal(owner, [first.document.id], worker=worker)
    listing = await running.ingest.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=auth(owner), timeout=10)
    assert [document.id for document in listing.documents] == [first.document.id]


async def test_delete_removes_row_and_vectors(stack) -> None:
    running, worker = stack
    owner = user()
    reply = await running.upload(owner, "gone.txt", text_document("deletion"))
    document_id = reply.document.id
    await running.wait_terminal(owner, [document_id], worker=worker)
    assert await running.stored_chunks(owner, document_id) > 0
    await running.ingest.DeleteDocument(ingest_pb2.DeleteDocumentRequest(document_id=document_id),
                                        metadata=auth(owner), timeout=10)
    assert await running.stored_chunks(owner, document_id) == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.get(owner, document_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # the same bytes can be uploaded again after a delete
    again = await running.upload(owner, "gone.txt", text_document("deletion"))
    assert not again.deduplicated


# pyproject.toml installs rapidocr-onnxruntime only below Python 3.13 (tests/test_ocr.py covers OCR's absence)
needs_rapidocr = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                                    reason="rapidocr-onnxruntime is not installed (no release for Python >= 3.13)")


@pytest.mark.parametrize(("filename", "status", "error_part", "reason"), [
    ("R-data_41p.pdf", COMPLETED, "", ""),
    ("encrypted_userpw_aes256_R-data_41p.pdf", FAILED, "password-protected", "PDF_ENCRYPTED"),
    pytest.param("scan_gutenberg-huckfinn-p29_1p.pdf", COMPLETED, "", "", marks=needs_rapidocr),  # OCR'd: below
    ("malformed_not-a-pdf.pdf", FAILED, "not a valid PDF", "PDF_INVALID"),
])
async def test_testdata_reaches_the_state_its_manifest_says(stack, filename, status, error_part, reason) -> None:
    running, worker = stack
    owner = user()
    reply = await running.upload(owner, filename, (TESTDATA / filename).read_bytes(), "application/pdf")
    document = (await running.wait_terminal(owner, [reply.document.id], timeout=240, worker=worker))[reply.document.id]
    assert document.status == status, (STATUS.Name(document.status), document.error)
    assert error_part in document.error and document.error_reason == reason  # the stable code beside the message
    if status == FAILED:
        assert describe(document) == f"failed · {document.error} ({reason})"
        assert document.progress.attempts == 1  # permanent: not retried
        assert await running.stored_chunks(owner, document.id) == 0


@needs_rapidocr
async def test_scanned_pdf_completes_with_its_ocr_text_on_page_1(stack) -> None:
    running, worker = stack
    owner = user()
    name = "scan_gutenberg-huckfinn-p29_1p.pdf"
    reply = await running.upload(owner, name, (TESTDATA / name).read_bytes(), "application/pdf")
    document = (await running.wait_terminal(owner, [reply.document.id], timeout=240, worker=worker))[reply.document.id]
    assert document.status == COMPLETED, document.error
    assert document.page_count == 1 and document.progress.pages_done == 1 and document.chunk_count >= 2
    result = await running.retrieval.Search(retrieval_pb2.SearchRequest(
        query="What did Miss Watson tell him about praying?", top_k=5, document_ids=[document.id]),
        metadata=auth(owner), timeout=30)
    found = [item for item in result.results if item.source == retrieval_pb2.SEARCH_SOURCE_DOCUMENTS]
    assert found and all(item.document.page_start == item.document.page_end == 1 for item in found)
    assert any("told me to pray every day" in item.text for item in found), [item.text[:80] for item in found]


async def test_truncated_pdf_ends_terminal_without_hanging(stack) -> None:
    running, worker = stack
    owner = user()
    name = "malformed_truncated55pct_R-intro_113p.pdf"
    reply = await running.upload(owner, name, (TESTDATA / name).read_bytes())
    document = (await running.wait_terminal(owner, [reply.document.id], timeout=240, worker=worker))[reply.document.id]
    if document.status == COMPLETED:  # recovered what could be recovered: then it is really searchable
        assert document.chunk_count > 0 and await running.stored_chunks(owner, document.id) == document.chunk_count
    else:
        assert "PDF" in document.error and document.error_reason == "PDF_INVALID"


async def test_the_worker_keeps_serving_after_bad_files(stack) -> None:
    running, worker = stack
    owner = user()
    bad = await running.upload(owner, "bad.pdf", (TESTDATA / "malformed_not-a-pdf.pdf").read_bytes())
    good = await running.upload(owner, "good.txt", text_document("resilience"))
    states = await running.wait_terminal(owner, [bad.document.id, good.document.id], worker=worker)
    assert states[bad.document.id].status == FAILED and states[good.document.id].status == COMPLETED
    # `docent queue` lists the failure with its reason code
    from services.operations import queue_report

    report = await queue_report(running.settings)
    assert any(bad.document.id in line and line.endswith("(PDF_INVALID)") for line in report.splitlines())


@pytest.mark.parametrize(("filename", "content", "code", "reason"), [
    ("empty.pdf", b"", grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_FILE"),
    ("image.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_FILE_TYPE"),
    ("program.txt", b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 64, grpc.StatusCode.INVALID_ARGUMENT,
     "UNSUPPORTED_FILE_TYPE"),
    ("", b"hello", grpc.StatusCode.INVALID_ARGUMENT, "FILENAME_REQUIRED"),
])
async def test_bad_uploads_are_rejected_with_a_reason_and_nothing_stored(stack, filename, content, code,
                                                                          reason) -> None:
    running, _ = stack
    owner = user()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.upload(owner, filename, content)
    assert caught.value.code() == code
    assert error_info(caught.value).reason == reason
    listing = await running.ingest.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=auth(owner), timeout=10)
    assert listing.total_size == 0


async def test_upload_over_the_size_cap_is_resource_exhausted(stack) -> None:
    running, _ = stack
    owner = user()
    limit = running.settings.max_upload_bytes
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.upload(owner, "big.txt", b"a" * (limit + 1), block=1024 * 1024)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "FILE_TOO_LARGE"


async def test_other_users_documents_are_not_found_everywhere(stack) -> None:
    running, worker = stack
    owner, stranger = user(), user()
    reply = await running.upload(owner, "private.txt", text_document("secrets"))
    document_id = reply.document.id
    calls = [
        running.ingest.GetDocument(ingest_pb2.GetDocumentRequest(document_id=document_id), metadata=auth(stranger),
                                   timeout=10),
        running.ingest.DeleteDocument(ingest_pb2.DeleteDocumentRequest(document_id=document_id),
                                      metadata=auth(stranger), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in running.ingest.WatchDocument(ingest_pb2.WatchDocumentRequest(document_id=document_id),
                                                    metadata=auth(stranger), timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listing = await running.ingest.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=auth(stranger),
                                                 timeout=10)
    assert listing.total_size == 0
    assert (await running.get(owner, document_id)).id == document_id  # still there for its owner
    await running.wait_terminal(owner, [document_id], worker=worker)


async def test_list_is_paginated_newest_first(stack) -> None:
    running, worker = stack
    owner = user()
    ids = []
    for number in range(5):
        ids.append((await running.upload(owner, f"doc{number}.txt", text_document(f"topic{number}", 1))).document.id)
    seen, token = [], ""
    while True:
        page = await running.ingest.ListDocuments(ingest_pb2.ListDocumentsRequest(page_size=2, page_token=token),
                                                  metadata=auth(owner), timeout=10)
        assert page.total_size == 5 and len(page.documents) <= 2
        seen.extend(document.id for document in page.documents)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.ingest.ListDocuments(ingest_pb2.ListDocumentsRequest(page_token="garbage!"),
                                           metadata=auth(owner), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await running.wait_terminal(owner, ids, worker=worker)


class _Hooks(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hooks.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


async def test_webhook_is_signed_and_sent_at_the_terminal_state(stack) -> None:
    running, worker = stack
    server = HTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        owner = user()
        url = f"http://127.0.0.1:{server.server_port}/hook"
        reply = await running.upload(owner, "hooked.txt", text_document("webhooks"), webhook_url=url)
        await running.wait_terminal(owner, [reply.document.id], worker=worker)
        for _ in range(50):
            if _Hooks.received:
                break
            await asyncio.sleep(0.1)
        headers, body = _Hooks.received[-1]
        expected = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Docent-Signature"] == f"sha256={expected}"
        payload = json.loads(body)
        assert payload["document_id"] == reply.document.id and payload["status"] == "completed"
        assert payload["event"] == "document.completed" and payload["error_reason"] is None
    finally:
        server.shutdown()


async def test_webhooks_to_this_machine_or_its_network_are_refused(stack) -> None:
    """Server-side request forgery: a user's webhook_url must not make the worker call internal services."""
    from services.ingest.webhook_target import refused_reason

    running, _ = stack
    running.settings.webhook_allow_private = False  # the default; this module's receiver needs it on
    try:
        for url in ("http://127.0.0.1:8000/hook", "http://localhost/hook", "http://[::1]/hook",
                    "http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook", "http://[::ffff:192.168.1.2]/"):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await running.upload(user(), "hooked.txt", text_document("forgery"), webhook_url=url)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
            assert error_info(raised.value).reason == "WEBHOOK_URL_FORBIDDEN", url
    finally:
        running.settings.webhook_allow_private = True
    assert await refused_reason("https://93.184.216.34/hook", allow_private=False) is None  # a public address
    assert await refused_reason("http://127.0.0.1/hook", allow_private=True) is None
