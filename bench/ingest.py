"""Ingest throughput against the embed-only floor, time to searchable, worker scale-out, 202 latency."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench import corpus
from bench.stats import summary
from docent.v1 import ingest_pb2, ingest_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.devstack import DevStack
from services.ingest.chunk import chunk_pages
from services.ingest.parse import iter_pages
from services.ingest.pipeline import MAX_CHUNK_TOKENS, OVERLAP_TOKENS
from services.runtime.embeddings import Tokenizer, create_embedder
from services.runtime.grpc_client import call_options, create_channel

PDF = "application/pdf"


def chunk_texts(data: bytes, mime: str) -> list[str]:
    return [chunk.text for chunk in chunk_pages(iter_pages(data, mime), Tokenizer.shared().count,
                                                 max_tokens=MAX_CHUNK_TOKENS, overlap_tokens=OVERLAP_TOKENS)]


def embed_only_seconds(stack: DevStack, documents: list[list[str]]) -> float:
    """The floor: embedding the same chunks, in the worker's batch size, in this process."""
    embedder = create_embedder(stack.settings())
    embedder.embed(["warm up"])
    started = time.perf_counter()
    for texts in documents:
        for start in range(0, len(texts), embedder.batch_size):
            embedder.embed(texts[start:start + embedder.batch_size])
    return time.perf_counter() - started


async def _upload(stub, token: str, name: str, data: bytes) -> str:
    async def requests():
        yield ingest_pb2.UploadDocumentRequest(metadata=ingest_pb2.UploadMetadata(filename=name))
        for start in range(0, len(data), 256 * 1024):
            yield ingest_pb2.UploadDocumentRequest(chunk=data[start:start + 256 * 1024])

    reply = await stub.UploadDocument(requests(), **call_options(token, 120))
    return reply.document.id


async def _wait_completed(stub, token: str, ids: list[str], timeout: float) -> dict[str, ingest_pb2.Document]:
    deadline = time.monotonic() + timeout
    done: dict[str, ingest_pb2.Document] = {}
    while len(done) < len(ids):
        for ident in [ident for ident in ids if ident not in done]:
            request = ingest_pb2.GetDocumentRequest(document_id=ident)
            document = await stub.GetDocument(request, **call_options(token, 30))
            if document.status in (ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED):
                done[ident] = document
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(done)} documents not done after {timeout:.0f}s")
        await asyncio.sleep(0.1)
    return done


async def long_pdf_run(stack: DevStack) -> dict:
    path = corpus.long_pdf(Path(tempfile.mkdtemp()) / "r-data-x5.pdf")
    data = path.read_bytes()
    texts = chunk_texts(data, PDF)
    floor = embed_only_seconds(stack, [texts])
    token = stack.token(f"bench-{uuid.uuid4().hex[:6]}")
    async with create_channel(stack.target("ingest")) as channel, \
            create_channel(stack.target("retrieval")) as retrieval_channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        search = retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel)
        started = time.perf_counter()
        document_id = await _upload(stub, token, path.name, data)
        searchable_after = None
        request = retrieval_pb2.SearchRequest(query="reading data into R", top_k=1,
                                              weights=retrieval_pb2.SourceWeights(documents=1, chat_history=0))
        while searchable_after is None:
            reply = await search.Search(request, **call_options(token, 30))
            if reply.results:
                searchable_after = time.perf_counter() - started
            await asyncio.sleep(0.05)
        document = (await _wait_completed(stub, token, [document_id], 900))[document_id]
        seconds = time.perf_counter() - started
    return {"pages": document.page_count, "chunks": document.chunk_count,
            "status": ingest_pb2.DocumentStatus.Name(document.status),
            "upload_to_completed_s": round(seconds, 2), "embed_only_s": round(floor, 2),
            "pages_per_s": round(document.page_count / seconds, 1),
            "chunks_per_s": round(document.chunk_count / seconds, 1),
            "embed_only_chunks_per_s": round(len(texts) / floor, 1), "ratio_vs_embed_only": round(floor / seconds, 3),
            "first_chunk_searchable_s": round(searchable_after, 2)}


async def batch_run(stack: DevStack, count: int, *, ack_uploads: int = 0) -> dict:
    """`count` small files at once; optionally measures 202 latency of 5 MB uploads while they are processed."""
    files = corpus.small_files(count)
    floor = embed_only_seconds(stack, [chunk_texts(data, "text/markdown") for _, data in files])
    token = stack.token(f"bench-{uuid.uuid4().hex[:6]}")
    async with create_channel(stack.target("ingest")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        started = time.perf_counter()
        gate = asyncio.Semaphore(8)

        async def one(name: str, data: bytes) -> str:
            async with gate:
                return await _upload(stub, token, name, data)

        ids = await asyncio.gather(*(one(name, data) for name, data in files))
        acks = await upload_acks(stack, ack_uploads) if ack_uploads else None
        documents = await _wait_completed(stub, token, list(ids), 1800)
        seconds = time.perf_counter() - started
    chunks = sum(document.chunk_count for document in documents.values())
    result = {"files": count, "chunks": chunks, "seconds": round(seconds, 2), "files_per_s": round(count / seconds, 2),
              "chunks_per_s": round(chunks / seconds, 1), "embed_only_s": round(floor, 2),
              "ratio_vs_embed_only": round(floor / seconds, 3),
              "failed": sum(1 for d in documents.values() if d.status != ingest_pb2.DOCUMENT_STATUS_COMPLETED)}
    if acks:
        result["upload_ack"] = acks
    return result


async def upload_acks(stack: DevStack, count: int) -> dict:
    """202 latency through the REST gateway for 5 MB files while the worker is busy.

    The files are 5 MB of bytes behind a PDF header: the acknowledgement path (stream, hash, store,
    enqueue) is the same as for a real PDF, and the worker rejects them in milliseconds instead of
    spending minutes on 5 MB of text, which would skew the rest of the run.
    """
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        reply = await client.post("/api/auth/signup", json={"email": email, "username": "bench",
                                                             "password": "bench-password"})
        headers = {"authorization": f"Bearer {reply.json()['access_token']}"}
        small, large = [], []
        for number in range(count):
            for size, bucket in ((1024, small), (5 * 1024 * 1024, large)):
                body = b"%PDF-1.7\n" + os.urandom(size)
                started = time.perf_counter()
                response = await client.post("/api/upload/", headers=headers,
                                             files={"file": (f"ack-{number}-{size}.pdf", body, PDF)})
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 202:
                    raise RuntimeError(f"upload answered {response.status_code}: {response.text[:200]}")
                bucket.append(elapsed)
    return {"5MB": summary(large), "floor_1KB": summary(small)}
