"""The retrieval service process: the only owner of the vector store."""

from __future__ import annotations

import asyncio

import grpc
import structlog

from docent.v1 import retrieval_pb2_grpc
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import DimensionMismatch, VectorStore
from services.runtime.config import Settings
from services.runtime.embeddings import Embedder, create_embedder
from services.runtime.names import RETRIEVAL_SERVICE

log = structlog.get_logger("docent.retrieval")


def create_store(settings: Settings) -> VectorStore:
    if settings.qdrant_url:
        from services.retrieval.store_qdrant import QdrantServerStore

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantServerStore.from_url(settings.qdrant_url, api_key)
    from services.retrieval.store_edge import EdgeStore

    return EdgeStore(settings.data_dir / "vectors")


class RetrievalApp:
    name = "retrieval"
    service_names = (RETRIEVAL_SERVICE,)

    def __init__(self, settings: Settings, *, store: VectorStore | None = None,
                 embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.store = store or create_store(settings)
        self.embedder = embedder
        self.servicer: RetrievalServicer | None = None

    async def start(self) -> None:
        if self.embedder is None:
            self.embedder = await asyncio.to_thread(create_embedder, self.settings)
        try:
            await self.store.open(self.embedder.dimension)
        except DimensionMismatch as error:
            raise SystemExit(f"docent: retrieval: {error}") from None
        assert self.servicer is not None
        self.servicer.bind_embedder(self.embedder)
        log.info("vector_store_open", store=self.store.name, model=self.embedder.model_name,
                 dimension=self.embedder.dimension)

    def register(self, server: grpc.aio.Server) -> None:
        self.servicer = RetrievalServicer(self.settings, self.store, self.embedder)
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(self.servicer, server)

    async def check_ready(self) -> bool:
        return await self.store.ping()

    async def close(self) -> None:
        if self.servicer is not None:
            await self.servicer.rerank.close()
        await self.store.close()
