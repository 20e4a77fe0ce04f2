"""`docent reindex` after an embedding-model change: collections rebuilt, everything queued again."""

from __future__ import annotations

import json
import uuid

from services.ingest.reindex import reindex
from services.retrieval.app import RetrievalApp
from services.retrieval.store_edge import DENSE
from services.runtime import db
from tests.conftest import create_database, make_settings, running_service


async def test_reindex_rebuilds_collections_and_requeues_documents_and_turns(backing, embedder, capsys) -> None:
    url = await create_database(backing.database_url)
    pool = await db.create_pool(url, max_size=2)
    redis_url = backing.redis_url.replace("db=0", "db=8")
    settings = make_settings(backing, database_url=url, redis_url=redis_url)
    try:
        # a store built for another model: 8-d vectors
        vectors = settings.data_dir / "vectors"
        app = RetrievalApp(settings, embedder=embedder)
        await app.store.open(8)
        await app.store.close()
        completed, failed = uuid.uuid4(), uuid.uuid4()
        for ident, status in ((completed, "completed"), (failed, "failed")):
            await pool.execute(
                """INSERT INTO documents (id, user_id, filename, mime_type, file_size, sha256, status, attempts)
                   VALUES ($1, 'u', 'f.txt', 'text/plain', 1, $2, $3, 1)""", ident, ident.hex, status)
        conversation, turn = uuid.uuid4(), uuid.uuid4()
        await pool.execute("INSERT INTO conversations (id, user_id, title) VALUES ($1, 'u', 't')", conversation)
        await pool.execute(
            """INSERT INTO chat_turns (id, conversation_id, user_id, seq, query, standalone_query, answer, model,
                                       vector_id, memory_indexed_at, memory_sweeps)
               VALUES ($1, $2, 'u', 1, 'q', 'q', 'a', 'm', 'p', now(), 2)""", turn, conversation)

        # refused while the retrieval service runs (it owns the store)
        async with running_service(RetrievalApp(settings.model_copy(update={"data_dir": settings.data_dir / "x"}),
                                                embedder=embedder), settings) as target:
            running = settings.model_copy(update={"retrieval_target": target})
            assert await reindex(running) == 1
            assert "stop it first" in capsys.readouterr().err

        assert await reindex(settings.model_copy(update={"retrieval_target": "127.0.0.1:1"})) == 0
        for collection in ("docent_chunks", "docent_chat_turns"):
            config = json.loads((vectors / collection / "edge_config.json").read_text())
            assert config["vectors"][DENSE]["size"] == embedder.dimension
        row = await pool.fetchrow("SELECT status, attempts FROM documents WHERE id = $1", completed)
        assert (row["status"], row["attempts"]) == ("pending", 0)
        assert await pool.fetchval("SELECT status FROM documents WHERE id = $1", failed) == "failed"
        turn_row = await pool.fetchrow("SELECT vector_id, memory_indexed_at, memory_sweeps FROM chat_turns")
        assert tuple(turn_row) == (None, None, 0)
        assert "1 documents queued again (1 enqueued now)" in capsys.readouterr().out
    finally:
        await pool.close()
