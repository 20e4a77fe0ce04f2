"""Replacing a document in place (IngestService.ReplaceDocument), end to end: real ingest and retrieval gRPC
servers, a real `docent worker`, embedded Postgres/Redis/qdrant-edge and the local ONNX model.

The active version stays searchable while the new one is processed; search switches in one step (never
both versions, never neither); a failed version leaves the active one; other users cannot replace; a
delete removes every version's chunks and bytes; the sweeper recovers a replacement like an upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import grpc
import pytest
import qdrant_edge as qe

from docent.v1 import ingest_pb2, retrieval_pb2
from services.ingest import documents, states
from services.ingest.collections import Caller
from services.retrieval.store import Source
from services.runtime.errors import error_info
from tests.conftest import TESTDATA, auth, make_settings
from tests.ingest_harness import ingest_stack

COMPLETED, FAILED = ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED
PENDING = ingest_pb2.DOCUMENT_STATUS_PENDING


@pytest.fixture(scope="module")
async def stack(backing, embedder):
    from tests.conftest import create_database

    settings = make_settings(backing, database_url=await create_database(backing.database_url),
                             lease_seconds=5, sweep_interval_seconds=1, max_attempts=3)
    async with ingest_stack(settings, embedder) as running:
        worker = running.worker().start()
        try:
            yield running, worker
        finally:
            worker.stop()


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def notes(word: str, paragraphs: int) -> bytes:
    """A Markdown file whose every paragraph names `word`, so a chunk's text says which version it is."""
    body = [f"# Inventory notes {word}"]
    for number in range(paragraphs):
        body.append(f"Paragraph {number} {word}: the warehouse inventory count for shelf {number} was "
                    f"{number * 13} boxes of {word} parts, checked by the inventory team every week.")
    return "\n\n".join(body).encode()


async def replace(running, owner: str, document_id: str, filename: str, content: bytes,
                  block: int = 64 * 1024) -> ingest_pb2.ReplaceDocumentResponse:
    async def requests():
        yield ingest_pb2.ReplaceDocumentRequest(metadata=ingest_pb2.ReplaceMetadata(
            document_id=document_id, filename=filename))
        for start in range(0, len(content), block):
            yield ingest_pb2.ReplaceDocumentRequest(chunk=content[start:start + block])

    return await running.ingest.ReplaceDocument(requests(), metadata=auth(owner), timeout=30)


async def wait_settled(running, owner: str, document_id: str, worker, timeout: float = 180) -> ingest_pb2.Document:
    """Terminal, with no replacement pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        document = await running.get(owner, document_id)
        if document.status in (COMPLETED, FAILED) and not document.pending_version:
            return document
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not settled: {document}\n{worker.output()[-3000:]}")
        await asyncio.sleep(0.1)


async def words_found(running, owner: str, document_id: str) -> set[str]:
    """Which versions' words the document's search results carry."""
    reply = await running.retrieval.Search(retrieval_pb2.SearchRequest(
        query="warehouse inventory count of boxes on the shelf", top_k=50, document_ids=[document_id],
        weights=retrieval_pb2.SourceWeights(documents=1.0, chat_history=0.0), min_score_documents=0.0),
        metadata=auth(owner), timeout=30)
    found = set()
    for result in reply.results:
        found |= {word for word in ("alphaword", "omegaword", "sigmaword") if word in result.text}
    return found


def all_points(running, owner: str, document_id: str) -> int:
    """Every point of the document in the store, searchable or staged."""
    shard = running.retrieval_built.service.store._shard(Source.DOCUMENTS)
    condition = qe.Filter(must=[qe.FieldCondition(key="user_id", match=qe.MatchValue(owner)),
                                qe.FieldCondition(key="document_id", match=qe.MatchValue(document_id))])
    return int(shard.count(qe.CountRequest(exact=True, filter=condition)))


async def test_the_old_version_is_searched_until_the_new_one_is_indexed_then_only_the_new(stack) -> None:
    running, worker = stack
    owner = user()
    first = await running.upload(owner, "v1.md", notes("alphaword", 30))
    document_id = first.document.id
    assert first.document.version == 1 and not first.document.pending_version
    done = await wait_settled(running, owner, document_id, worker)
    assert done.status == COMPLETED and [v.version for v in done.versions] == [1] and done.versions[0].active
    assert await words_found(running, owner, document_id) == {"alphaword"}

    new_bytes = notes("omegaword", 60)
    reply = await replace(running, owner, document_id, "v2.md", new_bytes, block=1000)
    assert reply.version == 2 and not reply.deduplicated
    pending = reply.document
    assert (pending.id, pending.version, pending.pending_version, pending.status) == (document_id, 1, 2, PENDING)
    assert pending.filename == "v1.md" and pending.sha256 == first.document.sha256  # the active version's
    assert pending.vector_collection  # still searchable
    assert [(v.version, v.status, v.active) for v in pending.versions] == [(1, COMPLETED, True), (2, PENDING, False)]
    assert pending.versions[1].sha256 == hashlib.sha256(new_bytes).hexdigest()
    assert pending.versions[1].file_size == len(new_bytes) and pending.versions[1].filename == "v2.md"

    # search while the replacement is processed: one version at a time, never both and never none
    seen: list[frozenset[str]] = []
    while True:
        seen.append(frozenset(await words_found(running, owner, document_id)))
        document = await running.get(owner, document_id)
        if document.status in (COMPLETED, FAILED) and not document.pending_version:
            break
    seen.append(frozenset(await words_found(running, owner, document_id)))
    assert seen[0] == {"alphaword"}, seen[:3]
    assert set(seen) == {frozenset({"alphaword"}), frozenset({"omegaword"})}, set(seen)
    switched = seen.index(frozenset({"omegaword"}))
    assert all(found == {"omegaword"} for found in seen[switched:])  # no way back

    assert document.status == COMPLETED, document
    assert (document.version, document.pending_version, document.filename) == (2, 0, "v2.md")
    assert document.sha256 == hashlib.sha256(new_bytes).hexdigest() and document.file_size == len(new_bytes)
    assert [(v.version, v.status, v.active) for v in document.versions] == [(1, COMPLETED, False),
                                                                           (2, COMPLETED, True)]
    assert document.versions[1].HasField("index_time") and document.chunk_count > done.chunk_count
    assert await running.stored_chunks(owner, document_id) == document.chunk_count
    assert all_points(running, owner, document_id) == document.chunk_count  # the old version's points are gone

    # the new bytes are this document's now: uploading them again finds it, the old ones make a new document
    again = await running.upload(owner, "copy.md", new_bytes)
    assert again.deduplicated and again.document.id == document_id
    old = await running.upload(owner, "v1-again.md", notes("alphaword", 30))
    assert not old.deduplicated and old.document.id != document_id


async def test_a_failed_replacement_keeps_the_active_version(stack) -> None:
    running, worker = stack
    owner = user()
    first = await running.upload(owner, "v1.md", notes("alphaword", 12))
    document_id = first.document.id
    done = await wait_settled(running, owner, document_id, worker)
    assert done.status == COMPLETED

    encrypted = (TESTDATA / "encrypted_userpw_aes256_R-data_41p.pdf").read_bytes()
    reply = await replace(running, owner, document_id, "secret.pdf", encrypted)
    assert reply.version == 2 and reply.document.versions[1].mime_type == "application/pdf"
    document = await wait_settled(running, owner, document_id, worker)
    assert document.status == COMPLETED and not document.error and not document.error_reason
    assert (document.version, document.pending_version, document.filename) == (1, 0, "v1.md")
    assert document.chunk_count == done.chunk_count and document.vector_collection
    failed = document.versions[1]
    assert (failed.version, failed.status, failed.error_reason, failed.active) == (2, FAILED, "PDF_ENCRYPTED", False)
    assert "password" in failed.error
    assert await words_found(running, owner, document_id) == {"alphaword"}
    assert all_points(running, owner, document_id) == done.chunk_count  # nothing of the failed version

    # and the document can be replaced again after it; the failed bytes do not block anything
    reply = await replace(running, owner, document_id, "v3.md", notes("sigmaword", 8))
    assert reply.version == 3
    document = await wait_settled(running, owner, document_id, worker)
    assert (document.status, document.version) == (COMPLETED, 3)
    assert [(v.version, v.status) for v in document.versions] == [(1, COMPLETED), (2, FAILED), (3, COMPLETED)]
    assert await words_found(running, owner, document_id) == {"sigmaword"}


async def test_replacing_a_failed_document_makes_it_searchable(stack) -> None:
    running, worker = stack
    owner = user()
    first = await running.upload(owner, "bad.pdf", (TESTDATA / "malformed_not-a-pdf.pdf").read_bytes())
    document_id = first.document.id
    failed = await wait_settled(running, owner, document_id, worker)
    assert failed.status == FAILED and failed.error_reason == "PDF_INVALID"
    await replace(running, owner, document_id, "good.md", notes("omegaword", 6))
    document = await wait_settled(running, owner, document_id, worker)
    assert (document.status, document.version, document.error, document.error_reason) == (COMPLETED, 2, "", "")
    assert [(v.version, v.status, v.error_reason) for v in document.versions] == [
        (1, FAILED, "PDF_INVALID"), (2, COMPLETED, "")]
    assert await words_found(running, owner, document_id) == {"omegaword"}


async def test_who_and_when_may_replace(stack) -> None:
    running, worker = stack
    owner, other = user(), user()
    content = notes("alphaword", 8)
    first = await running.upload(owner, "v1.md", content)
    document_id = first.document.id
    unrelated = await running.upload(owner, "other.md", notes("sigmaword", 5))

    # while the original upload is still pending or processing: busy
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await replace(running, owner, document_id, "v2.md", notes("omegaword", 8))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "DOCUMENT_BUSY"
    await wait_settled(running, owner, document_id, worker)
    await wait_settled(running, owner, unrelated.document.id, worker)

    # another user's document, an unknown id, a malformed id: NOT_FOUND, and nothing is stored
    for who, ident in ((other, document_id), (owner, str(uuid.uuid4())), (owner, "not-a-uuid")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await replace(running, who, ident, "v2.md", notes("omegaword", 8))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, (who, ident)
        assert error_info(caught.value).reason == "DOCUMENT_NOT_FOUND"
    assert [v.version for v in (await running.get(owner, document_id)).versions] == [1]

    # the active version's own bytes: nothing happens
    same = await replace(running, owner, document_id, "renamed.md", content)
    assert same.deduplicated and same.version == 1 and same.document.status == COMPLETED
    assert not same.document.pending_version and len(same.document.versions) == 1

    # another document's bytes: one user's bytes belong to one document
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await replace(running, owner, document_id, "dup.md", notes("sigmaword", 5))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(caught.value)
    assert info.reason == "DUPLICATE_DOCUMENT" and info.metadata["document_id"] == unrelated.document.id

    # a replacement in progress: a second one is refused, an upload of its bytes finds this document
    new_bytes = notes("omegaword", 40)
    await replace(running, owner, document_id, "v2.md", new_bytes)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await replace(running, owner, document_id, "v3.md", notes("omegaword", 9))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "DOCUMENT_BUSY"
    upload = await running.upload(owner, "same-as-v2.md", new_bytes)
    assert upload.deduplicated and upload.document.id == document_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await replace(running, owner, unrelated.document.id, "dup.md", new_bytes)
    assert error_info(caught.value).reason == "DUPLICATE_DOCUMENT"
    document = await wait_settled(running, owner, document_id, worker)
    assert (document.status, document.version) == (COMPLETED, 2)

    # the protocol of an upload: metadata first, once
    async def bytes_first():
        yield ingest_pb2.ReplaceDocumentRequest(chunk=b"abc")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.ingest.ReplaceDocument(bytes_first(), metadata=auth(owner), timeout=10)
    assert error_info(caught.value).reason == "UPLOAD_PROTOCOL"


async def test_delete_after_replace_leaves_nothing(stack) -> None:
    running, worker = stack
    owner = user()
    first = await running.upload(owner, "v1.md", notes("alphaword", 10))
    document_id = first.document.id
    await wait_settled(running, owner, document_id, worker)
    await replace(running, owner, document_id, "v2.md", notes("omegaword", 10))
    await wait_settled(running, owner, document_id, worker)
    await replace(running, owner, document_id, "v3.md", notes("sigmaword", 80))  # deleted while pending
    pool = running.ingest_built.service.pool
    ident = uuid.UUID(document_id)
    assert await pool.fetchval("SELECT count(*) FROM document_blobs WHERE document_id = $1", ident) == 3

    await running.ingest.DeleteDocument(ingest_pb2.DeleteDocumentRequest(document_id=document_id),
                                        metadata=auth(owner), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.get(owner, document_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # a worker may still be writing version 3: it finds the document gone and takes its points back
    for _ in range(100):
        if all_points(running, owner, document_id) == 0:
            break
        await asyncio.sleep(0.1)
    assert all_points(running, owner, document_id) == 0
    for table in ("document_blobs", "document_versions"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE document_id = $1", ident) == 0


async def test_a_replacement_whose_worker_dies_is_recovered(stack) -> None:
    running, worker = stack
    owner = user()
    first = await running.upload(owner, "v1.md", notes("alphaword", 10))
    document_id = first.document.id
    await wait_settled(running, owner, document_id, worker)
    worker.stop()
    try:
        await replace(running, owner, document_id, "v2.md", notes("omegaword", 400))
        crashing = running.worker("crashing").start()
        for _ in range(600):  # until the replacement is being processed
            document = await running.get(owner, document_id)
            if document.progress.stage in ("embedding", "indexing") or document.progress.chunks_done:
                break
            await asyncio.sleep(0.1)
        crashing.kill_hard()
        assert (await running.get(owner, document_id)).pending_version == 2
        assert await words_found(running, owner, document_id) == {"alphaword"}
    finally:
        worker.start()
    document = await wait_settled(running, owner, document_id, worker, timeout=300)
    assert (document.status, document.version, document.filename) == (COMPLETED, 2, "v2.md"), document
    assert document.progress.attempts >= 2
    assert await words_found(running, owner, document_id) == {"omegaword"}
    assert all_points(running, owner, document_id) == document.chunk_count


async def test_a_replacement_that_keeps_losing_its_worker_fails_and_the_old_version_stays(stack) -> None:
    """The sweeper's path, on the database: an expired lease on the last attempt fails the version only."""
    running, worker = stack
    owner = user()
    first = await running.upload(owner, "v1.md", notes("alphaword", 6))
    document_id = first.document.id
    await wait_settled(running, owner, document_id, worker)
    pool = running.ingest_built.service.pool
    ident = uuid.UUID(document_id)
    async with pool.acquire() as conn:
        row, version = await documents.insert_version(conn, caller=Caller(owner), document_id=document_id,
                                                      filename="v2.md", mime_type="text/markdown",
                                                      content=b"# other", sha256="f" * 64)
    assert version == 2 and row["status"] == "pending"
    # what a worker that died on its last attempt leaves behind (the real worker may not claim it first)
    await pool.execute("""UPDATE documents SET status = 'processing', attempts = 3,
                          lease_until = now() - interval '1 second' WHERE id = $1""", ident)
    await states.recover_expired_leases(pool, max_attempts=3)  # the worker's own sweeper may come first
    document = await running.get(owner, document_id)
    assert (document.status, document.version, document.pending_version) == (COMPLETED, 1, 0)
    assert (document.versions[1].status, document.versions[1].error_reason) == (FAILED, states.WORKER_LOST)
    assert await words_found(running, owner, document_id) == {"alphaword"}
