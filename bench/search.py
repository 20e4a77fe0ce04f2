"""Search and chat under concurrency, against the server-side floor measured in the same requests.

The corpus: 50 users × N chunks. Texts are paragraphs of the R manual; vectors are real embeddings
of them plus small noise (embedding 100k chunks would take the whole run on 2 cores, and what is
measured here is the query path, which is the same for any vectors).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

from bench import corpus
from bench.stats import summary
from docent.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.devstack import DevStack
from services.runtime.embeddings import create_embedder
from services.runtime.grpc_client import call_options, create_channel

USERS = 50
LEVELS = (1, 4, 16, 64)
QUESTIONS = [item["question"] for item in json.loads((corpus.REPO / "bench/eval/r_data.json").read_text())[
    "questions"]]


def user(number: int) -> str:
    return f"bench-user-{number:02d}"


async def seed(stack: DevStack, total_chunks: int) -> dict:
    paragraphs = corpus.manual_paragraphs()
    embedder = create_embedder(stack.settings())
    base = embedder.embed(paragraphs)
    vectors = corpus.noisy_vectors(base, total_chunks)
    per_user = total_chunks // USERS
    started = time.perf_counter()
    async with create_channel(stack.target("retrieval")) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        for number in range(USERS):
            token = stack.token(user(number))
            for document in range(max(1, per_user // 500)):
                offset = number * per_user + document * 500
                count = min(500, per_user)
                chunks = [retrieval_pb2.Chunk(
                    chunk_index=index, text=paragraphs[(offset + index) % len(paragraphs)], page_start=1 + index // 4,
                    page_end=1 + index // 4, embedding=vectors[offset + index].tolist()) for index in range(count)]
                await stub.UpsertChunks(retrieval_pb2.UpsertChunksRequest(
                    document_id=f"00000000-0000-4000-8000-{number:06d}{document:06d}",
                    filename=f"manual-{document}.pdf", chunks=chunks, embedding_model=embedder.model_name,
                    document_chunk_count=count), **call_options(token, 120))
    return {"chunks": per_user * USERS, "users": USERS, "seconds": round(time.perf_counter() - started, 1)}


async def _load(concurrency: int, requests: int, call) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    queue = list(range(requests))
    started = time.perf_counter()

    async def client() -> None:
        nonlocal errors
        while queue:
            number = queue.pop()
            began = time.perf_counter()
            try:
                await call(number)
                latencies.append((time.perf_counter() - began) * 1000)
            except Exception:
                errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


async def _search_level(stub, tokens: list[str], concurrency: int, requests: int) -> dict:
    server: list[float] = []
    parts: dict[str, list[float]] = {"embed_ms": [], "store_ms": [], "merge_ms": []}

    async def call(number: int) -> None:
        # distinct queries: every request pays for its query embedding, as real users' do
        query = f"{QUESTIONS[number % len(QUESTIONS)]} ({concurrency}-{number})"
        reply = await stub.Search(retrieval_pb2.SearchRequest(query=query, top_k=10),
                                  **call_options(random.choice(tokens), 30))
        timings = reply.timings
        server.append(timings.embed_ms + timings.store_ms + timings.merge_ms)
        for name, values in parts.items():
            values.append(getattr(timings, name))

    latencies, seconds, errors = await _load(concurrency, requests, call)
    client, floor = summary(latencies), summary(server)
    return {**client, "req_per_s": round(len(latencies) / seconds, 1), "errors": errors,
            "floor_p50_ms": floor["p50_ms"], "overhead_p50_ms": round(client["p50_ms"] - floor["p50_ms"], 2),
            "breakdown_p50_ms": {name: summary(values)["p50_ms"] for name, values in parts.items()}}


async def grpc_search(stack: DevStack, requests_per_level: int) -> dict:
    """gRPC Search per concurrency level; the floor is the server's own embed + store + merge time."""
    tokens = [stack.token(user(number)) for number in range(USERS)]
    async with create_channel(stack.target("retrieval")) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        return {str(level): await _search_level(stub, tokens, level, requests_per_level) for level in LEVELS}


async def _chat_level(client: httpx.AsyncClient, tokens: list[str], concurrency: int, requests: int) -> dict:
    parts: dict[str, list[float]] = {}

    async def call(number: int) -> None:
        # not the Search section's strings: those sit in the retrieval service's query-embedding cache, and a
        # chat whose query is a cache hit skips the one model run a real question pays for
        query = f"{QUESTIONS[number % len(QUESTIONS)]} (chat {concurrency}-{number})"
        response = await client.post("/api/chat/", json={"query": query},
                                     headers={"authorization": f"Bearer {random.choice(tokens)}"})
        response.raise_for_status()
        for name, value in response.json().get("timings", {}).items():
            parts.setdefault(name, []).append(value)

    latencies, seconds, errors = await _load(concurrency, requests, call)
    return {**summary(latencies), "req_per_s": round(len(latencies) / seconds, 1), "errors": errors,
            "breakdown_p50_ms": {name: summary(values)["p50_ms"] for name, values in parts.items()}}


async def rest_chat(stack: DevStack, requests_per_level: int) -> dict:
    """REST chat (gateway → chat → retrieval, offline answerer, turn stored) per concurrency level."""
    tokens = [stack.token(user(number)) for number in range(USERS)]
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60, limits=limits) as client:
        return {str(level): await _chat_level(client, tokens, level, requests_per_level) for level in LEVELS}
