"""`docent reindex` on a running system, through the services' RPCs: after an embedding-model change the
collections are rebuilt for the new model, and every document and chat turn is queued again."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from docent.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.chat.app import chat_service
from services.ingest.app import ingest_service
from services.ingest.collections import ensure_personal
from services.reindex import reindex
from services.retrieval.app import retrieval_service
from services.retrieval.store import EmbeddingSpace
from services.retrieval.store_edge import DENSE, EdgeStore
from services.runtime import db
from services.runtime.errors import error_info
from services.runtime.names import INDEX_CHAT_TURN, PROCESS_DOCUMENT
from services.runtime.queue import Enqueuer, pending_arguments
from tests.conftest import auth, create_database, make_settings, running_service


async def test_reindex_rebuilds_collections_and_requeues_documents_and_turns(backing, embedder, capsys) -> None:
    url = await create_database(backing.database_url)
    pool = await db.create_pool(url, max_size=2)
    redis_url = backing.redis_url.replace("db=0", "db=8")
    settings = make_settings(backing, database_url=url, redis_url=redis_url)
    enqueuer = Enqueuer(redis_url)
    try:
        # a store built for another model: 8-d vectors
        vectors = settings.data_dir / "vectors"
        old = EdgeStore(vectors)
        await old.open(EmbeddingSpace("another-model", 8))
        await old.close()
        completed, failed = uuid.uuid4(), uuid.uuid4()
        collection_id = await ensure_personal(pool, "u")
        for ident, status in ((completed, "completed"), (failed, "failed")):
            await pool.execute(
                """INSERT INTO documents (id, user_id, collection_id, filename, mime_type, file_size, sha256, status,
                                          attempts)
                   VALUES ($1, 'u', $4, 'f.txt', 'text/plain', 1, $2, $3, 1)""", ident, ident.hex, status,
                collection_id)
        conversation, turn = uuid.uuid4(), uuid.uuid4()
        await pool.execute("INSERT INTO conversations (id, user_id, title) VALUES ($1, 'u', 't')", conversation)
        await pool.execute(
            """INSERT INTO chat_turns (id, conversation_id, user_id, seq, query, standalone_query, answer, model,
                                       vector_id, memory_indexed_at, memory_sweeps)
               VALUES ($1, $2, 'u', 1, 'q', 'q', 'a', 'm', 'p', now(), 2)""", turn, conversation)

        # nothing runs: the command says so and changes nothing
        stopped = settings.model_copy(update={"retrieval_target": "127.0.0.1:1"})
        assert await reindex(stopped) == 1
        assert "Is Docent running?" in capsys.readouterr().err

        async with running_service(retrieval_service(settings, embedder=embedder), settings) as retrieval_target:
            settings = settings.model_copy(update={"retrieval_target": retrieval_target})
            async with grpc.aio.insecure_channel(retrieval_target) as channel:
                stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
                # the old vectors cannot serve the new model: a clear error, not wrong results
                with pytest.raises(grpc.aio.AioRpcError) as stale:
                    await stub.Search(retrieval_pb2.SearchRequest(query="q"), metadata=auth("u"), timeout=10)
                assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert error_info(stale.value).reason == "INDEX_REBUILD_REQUIRED"
                # a user's token cannot reset the index
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await stub.ResetIndex(retrieval_pb2.ResetIndexRequest(), metadata=auth("u"), timeout=10)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert error_info(denied.value).reason == "ADMIN_REQUIRED"

                async with running_service(ingest_service(settings), settings) as ingest_target, \
                        running_service(chat_service(settings), settings) as chat_target:
                    running = settings.model_copy(update={"ingest_target": ingest_target, "chat_target": chat_target})
                    assert await reindex(running) == 0

                # the collections serve the new model now
                await stub.Search(retrieval_pb2.SearchRequest(query="q"), metadata=auth("u"), timeout=10)
        for collection in ("docent_chunks", "docent_chat_turns"):
            config = json.loads((vectors / collection / "edge_config.json").read_text())
            assert config["vectors"][DENSE]["size"] == embedder.dimension
        row = await pool.fetchrow("SELECT status, attempts, task_id FROM documents WHERE id = $1", completed)
        assert (row["status"], row["attempts"]) == ("pending", 0) and row["task_id"]
        assert await pool.fetchval("SELECT status FROM documents WHERE id = $1", failed) == "failed"
        turn_row = await pool.fetchrow("SELECT vector_id, memory_indexed_at, memory_sweeps FROM chat_turns")
        assert tuple(turn_row) == (None, None, 0)
        assert pending_arguments(enqueuer.broker, "ingest", PROCESS_DOCUMENT) >= {str(completed)}
        assert pending_arguments(enqueuer.broker, "memory", INDEX_CHAT_TURN) >= {str(turn)}
        out = capsys.readouterr().out
        assert f"({embedder.dimension}-d, qdrant-edge)" in out
        assert "1 documents queued again (1 enqueued now" in out and "1 chat turns to re-embed" in out
    finally:
        enqueuer.close()
        await pool.close()


async def test_a_replica_sees_the_index_another_replica_rebuilt(tmp_path, embedder) -> None:
    """Several retrieval replicas share one Qdrant server; ResetIndex reaches one of them, and the others
    notice the rebuilt collections at their next readiness check."""
    from qdrant_client import AsyncQdrantClient

    from services.retrieval.rerank import RerankStage
    from services.retrieval.servicer import RetrievalServicer
    from services.retrieval.store import EmbeddingSpace, EmbeddingSpaceMismatch
    from services.retrieval.store_qdrant import QdrantServerStore

    store = QdrantServerStore(AsyncQdrantClient(path=str(tmp_path / "qdrant")))
    try:
        await store.open(EmbeddingSpace("another-model", 8))  # built for another model
        with pytest.raises(EmbeddingSpaceMismatch) as mismatch:
            await store.open(EmbeddingSpace(embedder.model_name, embedder.dimension))
        settings = make_settings(data_dir=tmp_path)
        replica = RetrievalServicer(settings, store, embedder, RerankStage.from_settings(settings),
                                    stale_index=str(mismatch.value))
        await replica.recheck_stale_index()
        assert replica.stale_index  # nothing rebuilt yet
        # what ResetIndex did on another replica
        await store.reset(EmbeddingSpace(embedder.model_name, embedder.dimension))
        await replica.recheck_stale_index()
        assert replica.stale_index == ""
    finally:
        await store.close()
