"""RetrievalService: index chunks and chat turns, and search both sources merged by weight."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence

import grpc
import numpy as np
import structlog
from google.protobuf import empty_pb2, timestamp_pb2

from docent.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval import sparse
from services.retrieval.fusion import weighted_rrf
from services.retrieval.merge import MergedItem, Weights, merge
from services.retrieval.rerank import RerankStage
from services.retrieval.store import (
    ChunkRecord,
    EmbeddingSpace,
    EmbeddingSpaceMismatch,
    Hit,
    SearchFilters,
    Source,
    TurnRecord,
    VectorStore,
    chunk_point_id,
    turn_point_id,
)
from services.runtime import tracing
from services.runtime.call_context import current_user_id, require_admin, searchable_collections
from services.runtime.config import Settings
from services.runtime.embeddings import Embedder
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.runtime.names import MAX_QUERY_CHARS, personal_collection_id

MAX_TOP_K = 100
CACHE_SIZE = 2048
QUERY_BATCH = 16
_SOURCE_TO_PB = {Source.DOCUMENTS: retrieval_pb2.SEARCH_SOURCE_DOCUMENTS,
                 Source.CHAT_HISTORY: retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY}


log = structlog.get_logger("docent.retrieval")


class QueryEmbeddingCache:
    """Query embeddings: an LRU (repeated questions skip the model) in front of a micro-batcher.

    Queries that arrive while the model is busy are embedded together in the next call, so under
    load one ONNX run serves many requests instead of each waiting for its own; a lone query is
    embedded at once, with no timer to wait for.
    """

    def __init__(self, embedder: Embedder, size: int = CACHE_SIZE, max_batch: int = QUERY_BATCH) -> None:
        self._embedder = embedder
        self._size = size
        self._max_batch = max_batch
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._waiting: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.model_calls = 0

    async def get(self, text: str) -> tuple[np.ndarray, bool]:
        cached = self._entries.get(text)
        if cached is not None:
            self._entries.move_to_end(text)
            return cached, True
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append((text, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        vector = await future
        self._entries[text] = vector
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return vector, False

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self._max_batch], self._waiting[self._max_batch:]
            texts = list(dict.fromkeys(text for text, _ in batch))
            try:
                self.model_calls += 1
                vectors = await asyncio.to_thread(self._embedder.embed_queries, texts)
            except Exception as error:  # every request of the batch gets the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            by_text = dict(zip(texts, vectors, strict=True))
            for text, future in batch:
                if not future.done():  # a cancelled request no longer waits
                    future.set_result(by_text[text])


def _require(value: str, name: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{name} is required", reason=f"{name.upper()}_REQUIRED")
    return value.strip()


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _result(item: MergedItem) -> retrieval_pb2.SearchResult:
    payload = item.hit.payload
    result = retrieval_pb2.SearchResult(
        source=_SOURCE_TO_PB[item.source], score=item.score, weight=item.weight,
        weighted_score=item.weighted_score, rank=item.rank, source_rank=item.source_rank,
        text=str(payload.get("text", "")),
    )
    if item.source is Source.DOCUMENTS:
        result.document.CopyFrom(retrieval_pb2.DocumentChunkHit(
            document_id=str(payload.get("document_id", "")), filename=str(payload.get("filename", "")),
            chunk_index=int(payload.get("chunk_index", 0)), page_start=int(payload.get("page_start", 0)),
            page_end=int(payload.get("page_end", 0)),
        ))
    else:
        result.chat_turn.CopyFrom(retrieval_pb2.ChatTurnHit(
            turn_id=str(payload.get("turn_id", "")), conversation_id=str(payload.get("conversation_id", "")),
            create_time=_timestamp(float(payload.get("created_at", 0.0))),
            user_message=str(payload.get("user_message", "")),
            assistant_message=str(payload.get("assistant_message", "")),
        ))
    return result


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, settings: Settings, store: VectorStore, embedder: Embedder, rerank: RerankStage, *,
                 stale_index: str = "") -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.space = EmbeddingSpace(embedder.model_name, embedder.dimension)
        self.cache = QueryEmbeddingCache(embedder)
        self.rerank = rerank
        # why the store cannot serve the loaded model (vectors of another size) until ResetIndex, else ""
        self.stale_index = stale_index

    def _require_current_index(self) -> None:
        if self.stale_index:
            raise FailedPrecondition(self.stale_index, reason="INDEX_REBUILD_REQUIRED")

    async def recheck_stale_index(self) -> None:
        """With several replicas on one Qdrant server, ResetIndex reaches one of them: the others find the
        collections rebuilt here (called with every readiness check)."""
        if not self.stale_index or not self.store.shared:
            return
        try:
            await self.store.open(self.space)
        except EmbeddingSpaceMismatch:
            return
        self.stale_index = ""
        log.warning("index_current_again", store=self.store.name, dimension=self.embedder.dimension)

    # maintenance --------------------------------------------------------------------------------

    async def ResetIndex(self, request: retrieval_pb2.ResetIndexRequest, context: grpc.aio.ServicerContext):
        require_admin()
        await self.store.reset(self.space)
        self.stale_index = ""
        log.warning("index_reset", store=self.store.name, model=self.embedder.model_name,
                    dimension=self.embedder.dimension)
        return retrieval_pb2.ResetIndexResponse(embedding_model=self.embedder.model_name,
                                                dimension=self.embedder.dimension, vector_store=self.store.name)

    # search -------------------------------------------------------------------------------------

    def _weights(self, request: retrieval_pb2.SearchRequest) -> Weights:
        given = request.weights
        documents = given.documents if given.HasField("documents") else self.settings.weight_documents
        chat = given.chat_history if given.HasField("chat_history") else self.settings.weight_chat_history
        for name, value in (("documents", documents), ("chat_history", chat)):
            if not 0 <= value <= 1:
                raise InvalidArgument(f"weights.{name} must be between 0 and 1", reason="WEIGHT_OUT_OF_RANGE")
        if documents == 0 and chat == 0:
            raise InvalidArgument("at least one weight must be above 0", reason="WEIGHTS_ALL_ZERO")
        return Weights(documents=documents, chat_history=chat)

    def _hybrid(self, mode: int) -> bool:
        if mode == retrieval_pb2.SEARCH_MODE_UNSPECIFIED:
            return self.settings.search_mode == "hybrid"
        return mode == retrieval_pb2.SEARCH_MODE_HYBRID

    async def Search(self, request: retrieval_pb2.SearchRequest, context: grpc.aio.ServicerContext):
        self._require_current_index()
        user_id = current_user_id()
        query = _require(request.query, "query")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"query is longer than {MAX_QUERY_CHARS} characters", reason="QUERY_TOO_LONG")
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidArgument(f"top_k must be between 1 and {MAX_TOP_K}", reason="TOP_K_OUT_OF_RANGE")
        top_k = request.top_k or self.settings.search_top_k
        weights = self._weights(request)
        hybrid = self._hybrid(request.mode)
        min_documents = (request.min_score_documents if request.HasField("min_score_documents")
                         else self.settings.min_score_documents)
        min_chat = (request.min_score_chat_history if request.HasField("min_score_chat_history")
                    else self.settings.min_score_chat_history)
        collections = searchable_collections()
        filters = SearchFilters(document_ids=tuple(request.document_ids), conversation_id=request.conversation_id,
                                exclude_conversation_id=request.exclude_conversation_id, collection_ids=collections,
                                legacy_personal=personal_collection_id(user_id) in collections)

        started = time.perf_counter()
        with tracing.span("retrieval.embed_query"):
            dense, cached = await self.cache.get(query)
        query_sparse = sparse.query_vector(query) if hybrid else None
        embedded = time.perf_counter()

        async def fetch(source: Source, min_score: float) -> list[Hit]:
            if weights.of(source) <= 0 or (source is Source.DOCUMENTS and not collections):
                return []
            # hybrid: the threshold applies to the dense prefetch inside the fusion query
            limit = self.rerank.candidates(top_k) if source is Source.DOCUMENTS else top_k
            dense_weight = self.settings.hybrid_dense_weight
            if not hybrid or dense_weight <= 0:
                return await self.store.search(source, user_id, dense, limit, filters, sparse=query_sparse,
                                               min_score=min_score if hybrid else None)
            # weighted hybrid: the dense ranking fused again with the store's dense + BM25 ranking
            both, plain = await asyncio.gather(
                self.store.search(source, user_id, dense, limit, filters, sparse=query_sparse, min_score=min_score),
                self.store.search(source, user_id, dense, limit, filters))
            plain = [hit for hit in plain if hit.score >= min_score]
            return weighted_rrf([(dense_weight, plain), (1.0 - dense_weight, both)], limit)

        with tracing.span("retrieval.vector_search", {"docent.search.mode": "hybrid" if hybrid else "dense",
                                                      "docent.search.top_k": top_k}):
            document_hits, chat_hits = await asyncio.gather(
                fetch(Source.DOCUMENTS, min_documents), fetch(Source.CHAT_HISTORY, min_chat))
        searched = time.perf_counter()
        # reranking (off by default) counts in merge_ms
        document_hits = await self.rerank.apply(query, document_hits, top_k=top_k,
                                                min_score=min_documents if not hybrid else 0.0)
        merged = merge(document_hits, chat_hits, top_k=top_k, weights=weights,
                       min_score_documents=min_documents if not hybrid else 0.0,
                       min_score_chat_history=min_chat if not hybrid else 0.0)
        done = time.perf_counter()
        response = retrieval_pb2.SearchResponse(
            results=[_result(item) for item in merged.items],
            chat_context_used=merged.chat_context_used,
            weights=retrieval_pb2.SourceWeights(documents=weights.documents, chat_history=weights.chat_history),
            mode=retrieval_pb2.SEARCH_MODE_HYBRID if hybrid else retrieval_pb2.SEARCH_MODE_DENSE,
            timings=retrieval_pb2.SearchTimings(
                embed_ms=(embedded - started) * 1000, store_ms=(searched - embedded) * 1000,
                merge_ms=(done - searched) * 1000, embedding_cached=cached),
            document_slots=merged.document_slots, chat_history_slots=merged.chat_history_slots,
            dropped_below_min_score=merged.dropped_below_min_score,
        )
        if request.return_query_embedding:
            response.query_embedding.extend(dense.tolist())
            response.query_embedding_model = self.embedder.model_name
        return response

    # writes -------------------------------------------------------------------------------------

    def _check_vectors(self, vectors: Sequence[Sequence[float]], model: str) -> None:
        if model and model != self.embedder.model_name:
            raise FailedPrecondition(
                f"vectors come from embedding model {model!r} but this store uses {self.embedder.model_name!r}",
                reason="EMBEDDING_MODEL_MISMATCH")
        for vector in vectors:
            if len(vector) != self.embedder.dimension:
                raise InvalidArgument(
                    f"embedding has {len(vector)} dimensions, the store expects {self.embedder.dimension}",
                    reason="EMBEDDING_DIMENSION_MISMATCH")

    async def UpsertChunks(self, request: retrieval_pb2.UpsertChunksRequest, context: grpc.aio.ServicerContext):
        self._require_current_index()
        user_id = current_user_id()
        document_id = _require(request.document_id, "document_id")
        self._check_vectors([chunk.embedding for chunk in request.chunks], request.embedding_model)
        indexes = [chunk.chunk_index for chunk in request.chunks]
        if len(set(indexes)) != len(indexes) or any(index < 0 for index in indexes):
            raise InvalidArgument("chunk_index values must be unique and >= 0", reason="CHUNK_INDEX_INVALID")
        records = [
            ChunkRecord(chunk_index=chunk.chunk_index, text=chunk.text, page_start=chunk.page_start,
                        page_end=chunk.page_end, embedding=list(chunk.embedding), token_count=chunk.token_count,
                        sparse=sparse.document_vector(chunk.text))
            for chunk in request.chunks
        ]
        if request.version < 0:
            raise InvalidArgument("version must be >= 1 (0 means 1)", reason="VERSION_INVALID")
        version = request.version or 1
        collection_id = request.collection_id or personal_collection_id(user_id)
        if collection_id not in searchable_collections():
            raise PermissionDenied("the caller's token does not name this collection", reason="COLLECTION_NOT_ALLOWED",
                                   collection_id=collection_id)
        ids = [chunk_point_id(document_id, record.chunk_index, version) for record in records]
        if ids and await self.store.owners(Source.DOCUMENTS, ids) - {user_id}:
            # another user's chunks: their ids derive from the document id, which is not this caller's
            raise NotFound(f"document {document_id} not found", reason="DOCUMENT_NOT_FOUND", document_id=document_id)
        count = await self.store.upsert_chunks(user_id, document_id, request.filename, records, version=version,
                                               staged=request.staged, collection_id=collection_id)
        if request.document_chunk_count > 0:
            await self.store.delete_stale_chunks(user_id, document_id, request.document_chunk_count, version=version)
        return retrieval_pb2.UpsertChunksResponse(upserted_count=count, collection=Source.DOCUMENTS.collection)

    async def DeleteDocumentChunks(self, request: retrieval_pb2.DeleteDocumentChunksRequest,
                                   context: grpc.aio.ServicerContext):
        self._require_current_index()
        document_id = _require(request.document_id, "document_id")
        if request.version > 0:
            await self.store.delete_version(current_user_id(), document_id, request.version)
        else:
            await self.store.delete_document(current_user_id(), document_id)
        return empty_pb2.Empty()

    async def ActivateDocumentVersion(self, request: retrieval_pb2.ActivateDocumentVersionRequest,
                                      context: grpc.aio.ServicerContext):
        self._require_current_index()
        document_id = _require(request.document_id, "document_id")
        if request.version < 1:
            raise InvalidArgument("version must be >= 1", reason="VERSION_INVALID")
        try:
            count = await self.store.activate_version(current_user_id(), document_id, request.version)
        except KeyError:
            raise FailedPrecondition(f"document {document_id} has no chunks of version {request.version}",
                                     reason="VERSION_NOT_INDEXED") from None
        log.info("document_version_activated", document_id=document_id, version=request.version, chunks=count)
        return retrieval_pb2.ActivateDocumentVersionResponse(chunk_count=count)

    async def UpsertChatTurn(self, request: retrieval_pb2.UpsertChatTurnRequest, context: grpc.aio.ServicerContext):
        self._require_current_index()
        user_id = current_user_id()
        turn_id = _require(request.turn_id, "turn_id")
        conversation_id = _require(request.conversation_id, "conversation_id")
        self._check_vectors([request.embedding], request.embedding_model)
        turn = TurnRecord(
            turn_id=turn_id, conversation_id=conversation_id, user_message=request.user_message,
            assistant_message=request.assistant_message,
            created_at=request.create_time.ToNanoseconds() / 1e9 if request.HasField("create_time") else time.time(),
            embedding=list(request.embedding),
            sparse=sparse.document_vector(f"{request.user_message}\n{request.assistant_message}"),
        )
        if await self.store.owners(Source.CHAT_HISTORY, [turn_point_id(turn_id)]) - {user_id}:
            raise NotFound(f"turn {turn_id} not found", reason="TURN_NOT_FOUND", turn_id=turn_id)
        point_id = await self.store.upsert_turn(user_id, turn)
        return retrieval_pb2.UpsertChatTurnResponse(point_id=point_id, collection=Source.CHAT_HISTORY.collection)

    async def DeleteConversationMemory(self, request: retrieval_pb2.DeleteConversationMemoryRequest,
                                       context: grpc.aio.ServicerContext):
        self._require_current_index()
        await self.store.delete_conversation(current_user_id(), _require(request.conversation_id, "conversation_id"))
        return empty_pb2.Empty()
