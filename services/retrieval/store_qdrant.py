"""Production adapter: a Qdrant server (or cluster) through qdrant-client's AsyncQdrantClient.

The same class runs against qdrant-client's local mode in the tests (same client API); no Qdrant
server binary can be installed from a package registry here.
"""

from __future__ import annotations

from collections.abc import Sequence

from qdrant_client import AsyncQdrantClient, models

from services.retrieval.store import (
    DENSE,
    RRF_K,
    SPARSE,
    ChunkRecord,
    EmbeddingSpace,
    Hit,
    SearchFilters,
    Source,
    SparseVector,
    TurnRecord,
    chunk_payload,
    chunk_point_id,
    normalise_rrf,
    turn_payload,
    turn_point_id,
    write_slot,
)

UPSERT_BATCH = 256
HYBRID_PREFETCH = 50
# collection metadata key: the model that built the collection
MODEL_RECORD = "embedding_model"
_INDEXES: dict[Source, list[tuple[str, models.PayloadSchemaType]]] = {
    Source.DOCUMENTS: [("document_id", models.PayloadSchemaType.KEYWORD),
                       ("collection_id", models.PayloadSchemaType.KEYWORD),
                       ("chunk_index", models.PayloadSchemaType.INTEGER),
                       ("version", models.PayloadSchemaType.INTEGER), ("slot", models.PayloadSchemaType.INTEGER),
                       ("live", models.PayloadSchemaType.INTEGER)],
    Source.CHAT_HISTORY: [("conversation_id", models.PayloadSchemaType.KEYWORD)],
}


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _int(key: str, value: int) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


# a chunk is searchable when its slot is the live one, or it predates versions (no `live`)
_VISIBLE = models.Filter(should=[
    models.IsEmptyCondition(is_empty=models.PayloadField(key="live")),
    models.Filter(must=[_int("slot", 0), _int("live", 0)]),
    models.Filter(must=[_int("slot", 1), _int("live", 1)])])


def _version(version: int) -> models.Condition:
    # version 1 includes the points written before versions existed
    if version == 1:
        return models.Filter(should=[_int("version", 1),
                                     models.IsEmptyCondition(is_empty=models.PayloadField(key="version"))])
    return _int("version", version)


def _document(user_id: str, document_id: str, *conditions: models.Condition,
              must_not: list[models.Condition] | None = None) -> models.Filter:
    return models.Filter(must=[_match("user_id", user_id), _match("document_id", document_id), *conditions],
                         must_not=must_not)


def _owner(source: Source, user_id: str, filters: SearchFilters | None) -> models.Condition:
    """Whose points: the searched collections' (documents), else the user's own."""
    if source is not Source.DOCUMENTS or filters is None or filters.collection_ids is None:
        return _match("user_id", user_id)
    should: list[models.Condition] = [models.FieldCondition(
        key="collection_id", match=models.MatchAny(any=list(filters.collection_ids)))]
    if filters.legacy_personal:
        should.append(models.Filter(must=[_match("user_id", user_id),
                                          models.IsEmptyCondition(is_empty=models.PayloadField(key="collection_id"))]))
    return models.Filter(should=should)


def _filter(source: Source, user_id: str, filters: SearchFilters | None) -> models.Filter:
    must: list[models.Condition] = [_owner(source, user_id, filters)]
    if source is Source.DOCUMENTS:
        must.append(_VISIBLE)
    must_not: list[models.Condition] = []
    if filters:
        if source is Source.DOCUMENTS and filters.document_ids:
            must.append(models.FieldCondition(key="document_id",
                                              match=models.MatchAny(any=list(filters.document_ids))))
        if source is Source.CHAT_HISTORY and filters.conversation_id:
            must.append(_match("conversation_id", filters.conversation_id))
        if source is Source.CHAT_HISTORY and filters.exclude_conversation_id:
            must_not.append(_match("conversation_id", filters.exclude_conversation_id))
    return models.Filter(must=must, must_not=must_not or None)


def _vectors(dense: Sequence[float], sparse: SparseVector | None) -> dict[str, object]:
    vectors: dict[str, object] = {DENSE: list(dense)}
    if sparse is not None and sparse.indices:
        vectors[SPARSE] = models.SparseVector(indices=list(sparse.indices), values=list(sparse.values))
    return vectors


class QdrantServerStore:
    name = "qdrant-server"
    shared = True

    def __init__(self, client: AsyncQdrantClient) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None, timeout: int = 30) -> QdrantServerStore:
        return cls(AsyncQdrantClient(url=url, api_key=api_key, timeout=timeout))

    async def open(self, space: EmbeddingSpace) -> None:
        for source in Source:
            name = source.collection
            if await self.client.collection_exists(name):
                info = await self.client.get_collection(name)
                vectors = info.config.params.vectors
                existing = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
                recorded = (info.config.metadata or {}).get(MODEL_RECORD)
                space.check(name, existing, str(recorded) if recorded else None)
                if not recorded:
                    await self.client.update_collection(name, metadata={MODEL_RECORD: space.model})
            else:
                await self._create(name, space)
            await self.client.create_payload_index(
                name, "user_id",
                field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
            )
            for field_name, schema in _INDEXES[source]:
                await self.client.create_payload_index(name, field_name, field_schema=schema)

    async def _create(self, name: str, space: EmbeddingSpace) -> None:
        try:
            await self.client.create_collection(
                name,
                vectors_config={DENSE: models.VectorParams(size=space.dimension, distance=models.Distance.COSINE)},
                sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                metadata={MODEL_RECORD: space.model},
            )
        except Exception:
            # another retrieval replica created it first
            if not await self.client.collection_exists(name):
                raise

    async def close(self) -> None:
        await self.client.close()

    async def reset(self, space: EmbeddingSpace) -> None:
        for source in Source:
            if await self.client.collection_exists(source.collection):
                await self.client.delete_collection(source.collection)
        await self.open(space)

    async def ping(self) -> bool:
        await self.client.get_collections()
        return True

    async def _first_payload(self, condition: models.Filter) -> dict[str, object] | None:
        points, _ = await self.client.scroll(Source.DOCUMENTS.collection, scroll_filter=condition, limit=1,
                                             with_payload=True, with_vectors=False)
        return dict(points[0].payload or {}) if points else None

    async def _delete(self, condition: models.Filter) -> None:
        await self.client.delete(Source.DOCUMENTS.collection, points_selector=models.FilterSelector(filter=condition),
                                 wait=True)

    async def upsert_chunks(self, user_id: str, document_id: str, filename: str,
                            chunks: Sequence[ChunkRecord], version: int = 1, staged: bool = False,
                            collection_id: str = "") -> int:
        live = await self._first_payload(_document(user_id, document_id, _VISIBLE))
        slot, live_slot = write_slot(live, version, staged)
        for start in range(0, len(chunks), UPSERT_BATCH):
            points = [
                models.PointStruct(id=chunk_point_id(document_id, chunk.chunk_index, version),
                                   vector=_vectors(chunk.embedding, chunk.sparse),  # type: ignore[arg-type]
                                   payload=chunk_payload(user_id, document_id, filename, chunk, version, slot,
                                                         live_slot, collection_id))
                for chunk in chunks[start:start + UPSERT_BATCH]
            ]
            await self.client.upsert(Source.DOCUMENTS.collection, points=points, wait=True)
        return len(chunks)

    async def delete_stale_chunks(self, user_id: str, document_id: str, keep_below: int, version: int = 1) -> None:
        await self._delete(_document(user_id, document_id, _version(version),
                                     models.FieldCondition(key="chunk_index", range=models.Range(gte=keep_below))))

    async def activate_version(self, user_id: str, document_id: str, version: int) -> int:
        first = await self._first_payload(_document(user_id, document_id, _version(version)))
        if first is None:
            raise KeyError(f"document {document_id} has no chunks of version {version}")
        slot = int(first.get("slot", 0))
        # invisible leftovers of other versions on the same slot (a failed replacement) would turn visible
        await self._delete(_document(user_id, document_id, _int("slot", slot), must_not=[_version(version)]))
        # the switch: one operation makes this version's points match and every other version's not
        await self.client.set_payload(Source.DOCUMENTS.collection, payload={"live": slot},
                                      points=models.FilterSelector(filter=_document(user_id, document_id)), wait=True)
        await self._delete(_document(user_id, document_id, must_not=[_int("slot", slot)]))
        reply = await self.client.count(Source.DOCUMENTS.collection, count_filter=_document(user_id, document_id),
                                        exact=True)
        return int(reply.count)

    async def delete_version(self, user_id: str, document_id: str, version: int) -> None:
        live = await self._first_payload(_document(user_id, document_id, _VISIBLE))
        if live is not None and int(live.get("version", 1)) == version:
            return  # the searchable version is never removed this way
        await self._delete(_document(user_id, document_id, _version(version)))

    async def delete_document(self, user_id: str, document_id: str) -> None:
        await self._delete(_document(user_id, document_id))

    async def upsert_turn(self, user_id: str, turn: TurnRecord) -> str:
        point_id = turn_point_id(turn.turn_id)
        await self.client.upsert(
            Source.CHAT_HISTORY.collection, wait=True,
            points=[models.PointStruct(id=point_id, vector=_vectors(turn.embedding, turn.sparse),  # type: ignore[arg-type]
                                       payload=turn_payload(user_id, turn))],
        )
        return point_id

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        condition = models.Filter(must=[_match("user_id", user_id), _match("conversation_id", conversation_id)])
        await self.client.delete(Source.CHAT_HISTORY.collection,
                                 points_selector=models.FilterSelector(filter=condition), wait=True)

    async def search(self, source: Source, user_id: str, dense: Sequence[float], limit: int,
                     filters: SearchFilters, sparse: SparseVector | None = None,
                     min_score: float | None = None) -> list[Hit]:
        condition = _filter(source, user_id, filters)
        if sparse is None:
            reply = await self.client.query_points(
                source.collection, query=list(dense), using=DENSE, query_filter=condition, limit=limit,
                with_payload=True, score_threshold=min_score,
            )
        else:
            prefetch = [models.Prefetch(query=list(dense), using=DENSE, limit=max(limit, HYBRID_PREFETCH),
                                        filter=condition, score_threshold=min_score)]
            if sparse.indices:
                prefetch.append(models.Prefetch(
                    query=models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
                    using=SPARSE, limit=max(limit, HYBRID_PREFETCH), filter=condition))
            reply = await self.client.query_points(
                source.collection, prefetch=prefetch, query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                query_filter=condition, limit=limit, with_payload=True,
            )
        return [
            Hit(str(point.id), normalise_rrf(point.score) if sparse is not None else float(point.score),
                dict(point.payload or {}))
            for point in reply.points
        ]

    async def count(self, source: Source, user_id: str, filters: SearchFilters | None = None) -> int:
        reply = await self.client.count(source.collection, count_filter=_filter(source, user_id, filters), exact=True)
        return int(reply.count)

    async def owners(self, source: Source, point_ids: Sequence[str]) -> set[str]:
        points = await self.client.retrieve(source.collection, ids=list(point_ids),
                                            with_payload=models.PayloadSelectorInclude(include=["user_id"]),
                                            with_vectors=False)
        return {str((point.payload or {}).get("user_id", "")) for point in points}
