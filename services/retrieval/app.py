"""The retrieval service process, the only owner of the vector store: `retrieval_service(settings)`
builds RetrievalService whole — the embedding model, the open store, the rerank stage — and
`serve()` runs it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc
import structlog

from docent.v1 import retrieval_pb2_grpc
from services.retrieval.rerank import RerankStage
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.store import EmbeddingSpace, EmbeddingSpaceMismatch, VectorStore
from services.retrieval.stores import create_store
from services.runtime.config import Settings
from services.runtime.embeddings import Embedder, create_embedder
from services.runtime.grpc_server import ServiceDefinition
from services.runtime.names import RETRIEVAL_SERVICE

log = structlog.get_logger("docent.retrieval")


@dataclass(frozen=True)
class RetrievalService:
    servicer: RetrievalServicer
    store: VectorStore
    resources: contextlib.AsyncExitStack

    def register(self, server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(self.servicer, server)

    async def check_ready(self) -> bool:
        await self.servicer.recheck_stale_index()
        # a stale index still answers (INDEX_REBUILD_REQUIRED per call) so that `docent reindex` can reach it
        return self.servicer.stale_index != "" or await self.store.ping()

    async def close(self) -> None:
        await self.resources.aclose()


async def build_retrieval_service(settings: Settings, embedder: Embedder | None = None) -> RetrievalService:
    """`embedder`: an already loaded model to share (tests); by default the configured one is loaded."""
    async with contextlib.AsyncExitStack() as stack:
        if embedder is None:
            embedder = await asyncio.to_thread(create_embedder, settings)
        store = create_store(settings)
        stack.push_async_callback(store.close)
        stale_index = ""
        try:
            await store.open(EmbeddingSpace(embedder.model_name, embedder.dimension))
        except EmbeddingSpaceMismatch as error:
            # serve anyway, so that an operator can rebuild it through ResetIndex (`docent reindex`); until
            # then searches and writes answer FAILED_PRECONDITION / INDEX_REBUILD_REQUIRED
            stale_index = str(error)
            log.error("vector_store_needs_reindex", detail=stale_index)
        rerank = RerankStage.from_settings(settings)
        stack.push_async_callback(rerank.close)
        log.info("vector_store_open", store=store.name, model=embedder.model_name, dimension=embedder.dimension)
        servicer = RetrievalServicer(settings, store, embedder, rerank, stale_index=stale_index)
        service = RetrievalService(servicer, store, stack.pop_all())
    return service


def retrieval_service(settings: Settings, *, embedder: Embedder | None = None) -> ServiceDefinition:
    return ServiceDefinition("retrieval", (RETRIEVAL_SERVICE,), lambda: build_retrieval_service(settings, embedder),
                             checks_revocation=True)
