"""`docent reindex`: rebuild every vector after the embedding model changed.

The vector collections are recreated with the configured model's dimension, every document goes
back to `pending` and every chat turn loses its memory vector; the workers' sweeper re-enqueues
them all, so the reindex runs on the normal, crash-safe path. The retrieval service must be
stopped first: it owns the vector store (the embedded engine keeps it open).
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.ingest import states
from services.retrieval.app import create_store
from services.runtime.config import Settings
from services.runtime.embedded import EmbeddedPostgres, find_running_postgres_url, find_running_redis_url
from services.runtime.embeddings import create_embedder
from services.runtime.names import PROCESS_DOCUMENT, RETRIEVAL_SERVICE
from services.runtime.queue import INGEST_QUEUE, Enqueuer


async def _retrieval_running(settings: Settings) -> bool:
    async with grpc.aio.insecure_channel(settings.target("retrieval")) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=RETRIEVAL_SERVICE), timeout=1)
            return True
        except grpc.aio.AioRpcError:
            return False


async def reindex(settings: Settings) -> int:
    if await _retrieval_running(settings):
        print(f"docent: the retrieval service at {settings.target('retrieval')} is running; stop it first "
              "(it owns the vector store), run `docent reindex`, then start everything again", file=sys.stderr)
        return 1
    embedded_postgres = None
    if not settings.database_url and not find_running_postgres_url(settings.data_dir):
        # everything is stopped, as it should be: run the embedded database just for this
        embedded_postgres = EmbeddedPostgres(settings.data_dir)
        settings = settings.model_copy(update={"database_url": await asyncio.to_thread(embedded_postgres.start)})
    try:
        return await _reindex(settings)
    finally:
        if embedded_postgres:
            await asyncio.to_thread(embedded_postgres.stop)


async def _reindex(settings: Settings) -> int:
    if not settings.redis_url:
        settings = settings.model_copy(update={"redis_url": find_running_redis_url(settings.data_dir)})
    embedder = await asyncio.to_thread(create_embedder, settings)
    store = create_store(settings)
    await store.reset(embedder.dimension)
    await store.close()
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            documents = await states.requeue_all(conn)
            turns = await conn.execute(
                "UPDATE chat_turns SET vector_id = NULL, memory_indexed_at = NULL, memory_sweeps = 0")
    finally:
        await conn.close()
    enqueued = 0
    try:
        if not settings.redis_url:
            raise ConnectionError("no Redis running")
        enqueuer = Enqueuer(settings.redis_url or "")
        try:
            for ident in documents:
                await enqueuer.enqueue(INGEST_QUEUE, PROCESS_DOCUMENT, str(ident))
                enqueued += 1
        finally:
            enqueuer.close()
    except Exception as error:  # the sweeper enqueues whatever is still pending
        print(f"docent: not enqueued now ({error}); the workers' sweeper picks them up when Docent starts")
    print(f"vector store rebuilt for {embedder.model_name} ({embedder.dimension}-d, {store.name}); "
          f"{len(documents)} documents queued again ({enqueued} enqueued now), "
          f"{turns.split()[-1]} chat turns to re-embed. Start Docent and the workers do the rest.")
    return 0
