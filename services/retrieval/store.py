"""The vector store port: what the retrieval service needs from Qdrant, whichever way it runs.

Two collections, one per source (document chunks, chat turns), each partitioned by a `user_id`
tenant payload index. Every read and write names the user, and the adapters put it inside the
store's filter: another tenant's points are never fetched, not filtered out afterwards.

Document versions (a document replaced in place): each chunk point carries its `version`, a `slot`
(0 or 1) and a `live` value (0 or 1); search and count only see points whose slot equals their live
value (or that have no `live` at all: points written before versions existed). A version is written
visible (slot = live) or staged (slot = 1 - live, on the slot the searchable version does not use);
activating a staged version is ONE set-payload-by-filter that writes `live = its slot` on every point
of the document: the old version's points stop matching and the new ones start matching in the same
operation, so no search sees a mix of both or neither. The old version's points are deleted after.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.runtime.embedding_models import LOCAL_MODEL_NAME, LOCAL_MODELS, MULTILINGUAL_MODEL_NAME
from services.runtime.names import CHUNKS_COLLECTION

TURNS_COLLECTION = "docent_chat_turns"
DENSE = "dense"
SPARSE = "bm25"
# uuid5 namespace for point ids: the same chunk or turn always gets the same id
POINT_NAMESPACE = uuid.UUID("6f0e4d0a-4b8e-4e8c-9d36-0c6f5b2f8d11")
# RRF constant of the hybrid fusion; scores are normalised by the best possible RRF score
RRF_K = 60


class Source(enum.Enum):
    DOCUMENTS = "documents"
    CHAT_HISTORY = "chat_history"

    @property
    def collection(self) -> str:
        return CHUNKS_COLLECTION if self is Source.DOCUMENTS else TURNS_COLLECTION


class EmbeddingSpaceMismatch(RuntimeError):
    """The store was built with another embedding model: a reindex is needed."""


# Stores record the model that built them since multilingual-e5-small was added. A store without a
# record was built before, by all-MiniLM-L6-v2 or an endpoint's model (kept by the deployment's own
# settings); only models added since could not have built it.
MODELS_NEWER_THAN_THE_RECORD = frozenset({MULTILINGUAL_MODEL_NAME})


@dataclass(frozen=True)
class EmbeddingSpace:
    """What a store's dense vectors come from. Two models of one dimension give vectors that look alike
    and mean nothing to each other, so the model is checked along with the dimension."""

    model: str
    dimension: int

    def check(self, collection: str, dimension: int | None, recorded_model: str | None) -> None:
        """Raise EmbeddingSpaceMismatch unless a collection of `dimension`-d vectors built by
        `recorded_model` (None: built before stores recorded it) serves this space."""
        if dimension != self.dimension:
            raise EmbeddingSpaceMismatch(
                f"vector collection {collection} holds {dimension}-d vectors but the embedding model "
                f"{self.model} gives {self.dimension}-d; run `docent reindex` to rebuild it with the new model")
        if recorded_model is None and self.model in MODELS_NEWER_THAN_THE_RECORD:
            raise EmbeddingSpaceMismatch(
                f"vector collection {collection} was built by an earlier embedding model but the embedding model "
                f"is now {self.model}; run `docent reindex` to rebuild it with the new model (or set "
                f"DOCENT_EMBEDDING_MODEL={LOCAL_MODEL_NAME}, the local model before {self.model}, to keep it)")
        if recorded_model is not None and recorded_model != self.model:
            keep = (f" (or set DOCENT_EMBEDDING_MODEL={recorded_model} to keep it)"
                    if recorded_model in LOCAL_MODELS else "")
            raise EmbeddingSpaceMismatch(
                f"vector collection {collection} was built by {recorded_model} but the embedding model is now "
                f"{self.model}; run `docent reindex` to rebuild it with the new model{keep}")


def chunk_point_id(document_id: str, chunk_index: int, version: int = 1) -> str:
    """Version 1 keeps the ids chunks had before versions existed; later versions get ids of their own."""
    key = f"chunk:{document_id}:{chunk_index}" if version <= 1 else f"chunk:{document_id}:v{version}:{chunk_index}"
    return str(uuid.uuid5(POINT_NAMESPACE, key))


def turn_point_id(turn_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"turn:{turn_id}"))


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class ChunkRecord:
    chunk_index: int
    text: str
    page_start: int
    page_end: int
    embedding: Sequence[float]
    token_count: int = 0
    sparse: SparseVector | None = None


@dataclass(frozen=True)
class TurnRecord:
    turn_id: str
    conversation_id: str
    user_message: str
    assistant_message: str
    created_at: float  # unix seconds
    embedding: Sequence[float]
    sparse: SparseVector | None = None

    @property
    def text(self) -> str:
        return f"User: {self.user_message}\nAssistant: {self.assistant_message}"


@dataclass(frozen=True)
class SearchFilters:
    document_ids: tuple[str, ...] = ()
    conversation_id: str = ""
    exclude_conversation_id: str = ""
    # documents: the collections to search (None: the user's own chunks, by user id, as chat memory is
    # searched). Chunks indexed before collections existed carry no collection: they are their uploader's
    # personal documents, found when `legacy_personal` is set (the personal collection is among them).
    collection_ids: tuple[str, ...] | None = None
    legacy_personal: bool = False


@dataclass(frozen=True)
class Hit:
    point_id: str
    score: float
    payload: dict[str, object] = field(default_factory=dict)


class VectorStore(Protocol):
    name: str
    # other processes write the same collections (a Qdrant server behind several retrieval replicas)
    shared: bool

    async def open(self, space: EmbeddingSpace) -> None:
        """Create missing collections and indexes, recording the model; raise EmbeddingSpaceMismatch when
        they were built for another model or dimension."""

    async def close(self) -> None: ...

    async def upsert_chunks(self, user_id: str, document_id: str, filename: str,
                            chunks: Sequence[ChunkRecord], version: int = 1, staged: bool = False,
                            collection_id: str = "") -> int:
        """Write one version's chunks: searchable at once, or `staged` (invisible until activate_version)
        unless `version` is already the document's searchable one. `collection_id` is the document's
        collection, which Search filters on."""

    async def delete_stale_chunks(self, user_id: str, document_id: str, keep_below: int, version: int = 1) -> None:
        """Delete this version's chunks with chunk_index >= keep_below (left from an earlier run)."""

    async def activate_version(self, user_id: str, document_id: str, version: int) -> int:
        """Make `version` the document's searchable version in one store operation, then delete the other
        versions' points; returns its number of chunks. KeyError when the version has no chunks."""

    async def delete_version(self, user_id: str, document_id: str, version: int) -> None:
        """Delete a staged version's chunks (a failed replacement); nothing when it is the searchable one."""

    async def delete_document(self, user_id: str, document_id: str) -> None:
        """Every version's chunks of the document."""

    async def upsert_turn(self, user_id: str, turn: TurnRecord) -> str: ...

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None: ...

    async def search(self, source: Source, user_id: str, dense: Sequence[float], limit: int,
                     filters: SearchFilters, sparse: SparseVector | None = None,
                     min_score: float | None = None) -> list[Hit]:
        """Best `limit` hits of one source for one user.

        Dense: cosine scores, `min_score` applied inside the store. Hybrid (`sparse` given): dense
        (thresholded) and BM25 candidates fused with RRF, scores normalised to 0..1.
        """

    async def count(self, source: Source, user_id: str, filters: SearchFilters | None = None) -> int: ...

    async def owners(self, source: Source, point_ids: Sequence[str]) -> set[str]:
        """The users whose points these ids already are (point ids derive from document or turn ids, so a
        write must not take over another user's point)."""

    async def ping(self) -> bool: ...

    async def reset(self, space: EmbeddingSpace) -> None:
        """Drop both collections and create them anew for `space` (reindex)."""


def write_slot(live: dict[str, object] | None, version: int, staged: bool) -> tuple[int, int]:
    """(slot, live) for the points of `version`, given the payload of one searchable point of the
    document (None: it has none). Visible writes take the searchable slot; staged ones the other."""
    live_slot = int(live.get("live", 0)) if live else 0  # points from before versions count as slot 0
    live_version = int(live.get("version", 1)) if live else 0
    if not staged or live_version == version:
        return live_slot, live_slot
    slot = 1 - live_slot
    return slot, live_slot


def chunk_payload(user_id: str, document_id: str, filename: str, chunk: ChunkRecord, version: int = 1,
                  slot: int = 0, live: int = 0, collection_id: str = "") -> dict[str, object]:
    return {
        "user_id": user_id,
        **({"collection_id": collection_id} if collection_id else {}),
        "document_id": document_id,
        "version": version,
        "slot": slot,
        "live": live,
        "filename": filename,
        "chunk_index": chunk.chunk_index,
        "page_start": chunk.page_start,
        "page_end": chunk.page_end,
        "token_count": chunk.token_count,
        "text": chunk.text,
    }


def turn_payload(user_id: str, turn: TurnRecord) -> dict[str, object]:
    return {
        "user_id": user_id,
        "conversation_id": turn.conversation_id,
        "turn_id": turn.turn_id,
        "user_message": turn.user_message,
        "assistant_message": turn.assistant_message,
        "created_at": turn.created_at,
        "text": turn.text,
    }


def normalise_rrf(score: float) -> float:
    # a point ranked first by both prefetches scores 2/(k+1)
    return min(1.0, score / (2.0 / (RRF_K + 1)))
