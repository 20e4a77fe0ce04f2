"""Embedded adapter: the Qdrant engine in-process (PyPI qdrant-edge-py), one shard per collection.

The engine is synchronous and holds the GIL while it works, so every call goes through a worker
thread (the event loop keeps accepting RPCs between calls) and writes go in modest batches. A
shard directory can be opened by one process only: the retrieval service is that process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import qdrant_edge as qe

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
# beside the engine's own files in each shard directory: the model that built the shard
MODEL_RECORD = "embedding_model"
HYBRID_PREFETCH = 50
_INDEXES: dict[Source, list[tuple[str, object]]] = {
    Source.DOCUMENTS: [("document_id", qe.PayloadSchemaType.Keyword), ("collection_id", qe.PayloadSchemaType.Keyword),
                       ("chunk_index", qe.PayloadSchemaType.Integer),
                       ("version", qe.PayloadSchemaType.Integer), ("slot", qe.PayloadSchemaType.Integer),
                       ("live", qe.PayloadSchemaType.Integer)],
    Source.CHAT_HISTORY: [("conversation_id", qe.PayloadSchemaType.Keyword)],
}


def _config(dimension: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )


def _match(key: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _int(key: str, value: int) -> qe.FieldCondition:
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


# a chunk is searchable when its slot is the live one, or it predates versions (no `live`)
_VISIBLE = qe.Filter(should=[qe.IsEmptyCondition("live"),
                             qe.Filter(must=[_int("slot", 0), _int("live", 0)]),
                             qe.Filter(must=[_int("slot", 1), _int("live", 1)])])


def _version(version: int) -> object:
    # version 1 includes the points written before versions existed
    if version == 1:
        return qe.Filter(should=[_int("version", 1), qe.IsEmptyCondition("version")])
    return _int("version", version)


def _owner(source: Source, user_id: str, filters: SearchFilters | None) -> object:
    """Whose points: the searched collections' (documents), else the user's own."""
    if source is not Source.DOCUMENTS or filters is None or filters.collection_ids is None:
        return _match("user_id", user_id)
    should: list[object] = [qe.FieldCondition(key="collection_id", match=qe.MatchAny(list(filters.collection_ids)))]
    if filters.legacy_personal:
        should.append(qe.Filter(must=[_match("user_id", user_id), qe.IsEmptyCondition("collection_id")]))
    return qe.Filter(should=should)


def _filter(source: Source, user_id: str, filters: SearchFilters | None) -> qe.Filter:
    must: list[object] = [_owner(source, user_id, filters)]
    if source is Source.DOCUMENTS:
        must.append(_VISIBLE)
    must_not: list[object] = []
    if filters:
        if source is Source.DOCUMENTS and filters.document_ids:
            must.append(qe.FieldCondition(key="document_id", match=qe.MatchAny(list(filters.document_ids))))
        if source is Source.CHAT_HISTORY and filters.conversation_id:
            must.append(_match("conversation_id", filters.conversation_id))
        if source is Source.CHAT_HISTORY and filters.exclude_conversation_id:
            must_not.append(_match("conversation_id", filters.exclude_conversation_id))
    return qe.Filter(must=must, must_not=must_not or None)


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(indices=list(vector.indices), values=list(vector.values))


def _vectors(dense: Sequence[float], sparse: SparseVector | None) -> dict[str, object]:
    vectors: dict[str, object] = {DENSE: list(dense)}
    if sparse is not None and sparse.indices:
        vectors[SPARSE] = _sparse(sparse)
    return vectors


class EdgeStore:
    name = "qdrant-edge"
    shared = False  # the embedded engine belongs to this process

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._shards: dict[Source, qe.EdgeShard] = {}

    def _path(self, source: Source) -> Path:
        return self.directory / source.collection

    # lifecycle ----------------------------------------------------------------------------------

    async def open(self, space: EmbeddingSpace) -> None:
        await asyncio.to_thread(self._open_sync, space)

    def _open_sync(self, space: EmbeddingSpace) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for source in Source:
            path = self._path(source)
            config_file = path / "edge_config.json"
            record = path / MODEL_RECORD
            if config_file.exists():
                existing = json.loads(config_file.read_text())["vectors"][DENSE]["size"]
                space.check(source.collection, existing, record.read_text().strip() if record.exists() else None)
                shard = qe.EdgeShard.load(str(path))
            else:
                shard = qe.EdgeShard.create(str(path), _config(space.dimension))
            if not record.exists():
                partial = record.with_suffix(".partial")
                partial.write_text(space.model)
                partial.replace(record)
            shard.update(qe.UpdateOperation.create_field_index("user_id", qe.KeywordIndexParams(is_tenant=True)))
            for field_name, schema in _INDEXES[source]:
                shard.update(qe.UpdateOperation.create_field_index(field_name, schema))
            self._shards[source] = shard

    async def close(self) -> None:
        shards, self._shards = self._shards, {}
        for shard in shards.values():
            await asyncio.to_thread(shard.close)

    async def reset(self, space: EmbeddingSpace) -> None:
        await self.close()
        for source in Source:
            await asyncio.to_thread(shutil.rmtree, self._path(source), True)
        await self.open(space)

    async def ping(self) -> bool:
        return len(self._shards) == len(Source)

    def _shard(self, source: Source) -> qe.EdgeShard:
        try:
            return self._shards[source]
        except KeyError:
            raise RuntimeError("vector store is not open") from None

    # writes -------------------------------------------------------------------------------------

    def _document(self, user_id: str, document_id: str, *conditions: object,
                  must_not: list[object] | None = None) -> qe.Filter:
        return qe.Filter(must=[_match("user_id", user_id), _match("document_id", document_id), *conditions],
                         must_not=must_not)

    def _first_payload(self, condition: qe.Filter) -> dict[str, object] | None:
        records, _ = self._shard(Source.DOCUMENTS).scroll(qe.ScrollRequest(limit=1, filter=condition,
                                                                           with_payload=True, with_vector=False))
        return dict(records[0].payload or {}) if records else None

    async def upsert_chunks(self, user_id: str, document_id: str, filename: str,
                            chunks: Sequence[ChunkRecord], version: int = 1, staged: bool = False,
                            collection_id: str = "") -> int:
        shard = self._shard(Source.DOCUMENTS)
        live = await asyncio.to_thread(self._first_payload, self._document(user_id, document_id, _VISIBLE))
        slot, live_slot = write_slot(live, version, staged)
        for start in range(0, len(chunks), UPSERT_BATCH):
            points = [
                qe.Point(chunk_point_id(document_id, chunk.chunk_index, version),
                         _vectors(chunk.embedding, chunk.sparse),
                         chunk_payload(user_id, document_id, filename, chunk, version, slot, live_slot,
                                       collection_id))
                for chunk in chunks[start:start + UPSERT_BATCH]
            ]
            await asyncio.to_thread(shard.update, qe.UpdateOperation.upsert_points(points))
        return len(chunks)

    async def delete_stale_chunks(self, user_id: str, document_id: str, keep_below: int, version: int = 1) -> None:
        stale = self._document(user_id, document_id, _version(version),
                               qe.FieldCondition(key="chunk_index", range=qe.RangeFloat(gte=float(keep_below))))
        await asyncio.to_thread(self._shard(Source.DOCUMENTS).update,
                                qe.UpdateOperation.delete_points_by_filter(stale))

    async def activate_version(self, user_id: str, document_id: str, version: int) -> int:
        return await asyncio.to_thread(self._activate_sync, user_id, document_id, version)

    def _activate_sync(self, user_id: str, document_id: str, version: int) -> int:
        shard = self._shard(Source.DOCUMENTS)
        first = self._first_payload(self._document(user_id, document_id, _version(version)))
        if first is None:
            raise KeyError(f"document {document_id} has no chunks of version {version}")
        slot = int(first.get("slot", 0))
        # invisible leftovers of other versions on the same slot (a failed replacement) would turn visible
        shard.update(qe.UpdateOperation.delete_points_by_filter(
            self._document(user_id, document_id, _int("slot", slot), must_not=[_version(version)])))
        # the switch: one operation makes this version's points match and every other version's not
        shard.update(qe.UpdateOperation.set_payload_by_filter(self._document(user_id, document_id), {"live": slot}))
        shard.update(qe.UpdateOperation.delete_points_by_filter(
            self._document(user_id, document_id, must_not=[_int("slot", slot)])))
        return int(shard.count(qe.CountRequest(exact=True, filter=self._document(user_id, document_id))))

    async def delete_version(self, user_id: str, document_id: str, version: int) -> None:
        await asyncio.to_thread(self._delete_version_sync, user_id, document_id, version)

    def _delete_version_sync(self, user_id: str, document_id: str, version: int) -> None:
        live = self._first_payload(self._document(user_id, document_id, _VISIBLE))
        if live is not None and int(live.get("version", 1)) == version:
            return  # the searchable version is never removed this way
        self._shard(Source.DOCUMENTS).update(qe.UpdateOperation.delete_points_by_filter(
            self._document(user_id, document_id, _version(version))))

    async def delete_document(self, user_id: str, document_id: str) -> None:
        await asyncio.to_thread(self._shard(Source.DOCUMENTS).update,
                                qe.UpdateOperation.delete_points_by_filter(self._document(user_id, document_id)))

    async def upsert_turn(self, user_id: str, turn: TurnRecord) -> str:
        point_id = turn_point_id(turn.turn_id)
        point = qe.Point(point_id, _vectors(turn.embedding, turn.sparse), turn_payload(user_id, turn))
        await asyncio.to_thread(self._shard(Source.CHAT_HISTORY).update, qe.UpdateOperation.upsert_points([point]))
        return point_id

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        condition = qe.Filter(must=[_match("user_id", user_id), _match("conversation_id", conversation_id)])
        await asyncio.to_thread(self._shard(Source.CHAT_HISTORY).update,
                                qe.UpdateOperation.delete_points_by_filter(condition))

    # reads --------------------------------------------------------------------------------------

    async def search(self, source: Source, user_id: str, dense: Sequence[float], limit: int,
                     filters: SearchFilters, sparse: SparseVector | None = None,
                     min_score: float | None = None) -> list[Hit]:
        condition = _filter(source, user_id, filters)
        if sparse is None:
            request = qe.QueryRequest(query=qe.Query.Nearest(list(dense), using=DENSE), filter=condition,
                                      limit=limit, with_payload=True, score_threshold=min_score)
        else:
            prefetches = [qe.Prefetch(limit=max(limit, HYBRID_PREFETCH),
                                      query=qe.Query.Nearest(list(dense), using=DENSE), score_threshold=min_score)]
            if sparse.indices:
                prefetches.append(qe.Prefetch(limit=max(limit, HYBRID_PREFETCH),
                                              query=qe.Query.Nearest(_sparse(sparse), using=SPARSE)))
            request = qe.QueryRequest(prefetches=prefetches, query=qe.Fusion.Rrf(k=RRF_K), filter=condition,
                                      limit=limit, with_payload=True)
        points = await asyncio.to_thread(self._shard(source).query, request)
        return [
            Hit(str(point.id), normalise_rrf(point.score) if sparse is not None else float(point.score),
                dict(point.payload or {}))
            for point in points
        ]

    async def count(self, source: Source, user_id: str, filters: SearchFilters | None = None) -> int:
        request = qe.CountRequest(exact=True, filter=_filter(source, user_id, filters))
        return int(await asyncio.to_thread(self._shard(source).count, request))

    async def owners(self, source: Source, point_ids: Sequence[str]) -> set[str]:
        records = await asyncio.to_thread(self._shard(source).retrieve, list(point_ids), True, False)
        return {str((record.payload or {}).get("user_id", "")) for record in records}
