"""Store query latency and memory as the collection grows: qdrant-edge vs qdrant-client local mode.

In-process, straight on the VectorStore port (no gRPC, no embedding): this is the store's own
cost. Vectors are random unit vectors (384-d), spread over 50 users; each query is one user's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from bench import corpus
from bench.stats import summary
from services.retrieval.store import ChunkRecord, EmbeddingSpace, SearchFilters, Source, VectorStore

DIMENSION = 384
USERS = 50
BATCH = 1000
QUERIES = 200


def make_store(kind: str, directory: Path) -> VectorStore:
    if kind == "edge":
        from services.retrieval.store_edge import EdgeStore

        return EdgeStore(directory)
    from qdrant_client import AsyncQdrantClient

    from services.retrieval.store_qdrant import QdrantServerStore

    return QdrantServerStore(AsyncQdrantClient(path=str(directory)))


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


async def measure(kind: str, sizes: list[int]) -> list[dict]:
    """Grow one collection through `sizes`, measuring after each step."""
    directory = Path(tempfile.mkdtemp(prefix=f"docent-scale-{kind}-"))
    store = make_store(kind, directory)
    rows: list[dict] = []
    baseline = rss_mb()
    try:
        await store.open(EmbeddingSpace("random-vectors", DIMENSION))
        loaded = 0
        queries = corpus.random_unit_vectors(QUERIES, DIMENSION, seed=99)
        for size in sizes:
            started = time.perf_counter()
            while loaded < size:
                count = min(BATCH, size - loaded)
                vectors = corpus.random_unit_vectors(count, DIMENSION, seed=loaded)
                user = f"user-{(loaded // BATCH) % USERS}"
                records = [ChunkRecord(index, "chunk text", 1, 1, vectors[index]) for index in range(count)]
                await store.upsert_chunks(user, f"00000000-0000-4000-8000-{loaded:012d}", "synthetic.pdf", records)
                loaded += count
            load_seconds = time.perf_counter() - started
            latencies = []
            for number in range(QUERIES):
                began = time.perf_counter()
                await store.search(Source.DOCUMENTS, f"user-{number % USERS}", queries[number], 10, SearchFilters())
                latencies.append((time.perf_counter() - began) * 1000)
            rows.append({"store": kind, "chunks": size, **summary(latencies), "load_s": round(load_seconds, 1),
                         "rss_delta_mb": round(rss_mb() - baseline, 1)})
    finally:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def run(sizes: list[int], local_mode_cap: int) -> list[dict]:
    rows = asyncio.run(measure("edge", sizes))
    rows += asyncio.run(measure("qdrant-local", [size for size in sizes if size <= local_mode_cap]))
    return rows


if __name__ == "__main__":
    for row in run([1000, 5000], 5000):
        print(row)
