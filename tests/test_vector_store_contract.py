"""One contract, two adapters: embedded qdrant-edge and the Qdrant server client (in local mode)."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from services.retrieval import sparse
from services.retrieval.store import (
    ChunkRecord,
    EmbeddingSpace,
    EmbeddingSpaceMismatch,
    SearchFilters,
    Source,
    TurnRecord,
    chunk_point_id,
    turn_point_id,
)
from services.retrieval.store_edge import EdgeStore
from services.retrieval.store_qdrant import QdrantServerStore

DIM = 16
SPACE = EmbeddingSpace("test-model", DIM)


def unit(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).normal(size=DIM)
    return list((vector / np.linalg.norm(vector)).astype(np.float32))


def chunk(index: int, seed: int, text: str = "") -> ChunkRecord:
    text = text or f"chunk number {index}"
    return ChunkRecord(chunk_index=index, text=text, page_start=index + 1, page_end=index + 1,
                       embedding=unit(seed), token_count=3, sparse=sparse.document_vector(text))


def turn(turn_id: str, conversation_id: str, seed: int, text: str = "hello") -> TurnRecord:
    return TurnRecord(turn_id=turn_id, conversation_id=conversation_id, user_message=text,
                      assistant_message="answer", created_at=1_700_000_000.0, embedding=unit(seed),
                      sparse=sparse.document_vector(text))


def make_store(kind: str, path):
    if kind == "edge":
        return EdgeStore(path / "vectors")
    return QdrantServerStore(AsyncQdrantClient(path=str(path / "qdrant-local")))


@pytest.fixture(params=["edge", "qdrant-client"])
async def store(request, tmp_path):
    instance = make_store(request.param, tmp_path)
    await instance.open(SPACE)
    yield instance
    await instance.close()


async def test_upsert_is_idempotent(store) -> None:
    chunks = [chunk(i, i) for i in range(5)]
    await store.upsert_chunks("alice", "doc-1", "a.pdf", chunks)
    await store.upsert_chunks("alice", "doc-1", "a.pdf", chunks)
    assert await store.count(Source.DOCUMENTS, "alice") == 5
    await store.upsert_turn("alice", turn("t1", "conv-1", 1))
    await store.upsert_turn("alice", turn("t1", "conv-1", 1))
    assert await store.count(Source.CHAT_HISTORY, "alice") == 1


async def test_search_returns_payload_and_scores(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "a.pdf", [chunk(i, i) for i in range(5)])
    hits = await store.search(Source.DOCUMENTS, "alice", unit(3), 3, SearchFilters())
    assert hits[0].point_id == chunk_point_id("doc-1", 3)
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].payload["filename"] == "a.pdf" and hits[0].payload["page_start"] == 4
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


async def test_tenant_isolation_under_every_filter(store) -> None:
    await store.upsert_chunks("alice", "doc-a", "a.pdf", [chunk(i, i) for i in range(4)])
    await store.upsert_turn("alice", turn("ta", "conv-a", 7))
    query = unit(1)
    filter_sets = [SearchFilters(), SearchFilters(document_ids=("doc-a",)), SearchFilters(conversation_id="conv-a"),
                   SearchFilters(exclude_conversation_id="other"), SearchFilters(document_ids=("doc-a", "x"))]
    for filters in filter_sets:
        for source in Source:
            assert await store.search(source, "bob", query, 10, filters) == []
            assert await store.count(source, "bob", filters) == 0
    # deletes by another user touch nothing
    await store.delete_document("bob", "doc-a")
    await store.delete_conversation("bob", "conv-a")
    assert await store.count(Source.DOCUMENTS, "alice") == 4
    assert await store.count(Source.CHAT_HISTORY, "alice") == 1


async def test_document_and_conversation_filters(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "a.pdf", [chunk(i, i) for i in range(3)])
    await store.upsert_chunks("alice", "doc-2", "b.pdf", [chunk(i, 10 + i) for i in range(3)])
    hits = await store.search(Source.DOCUMENTS, "alice", unit(0), 10, SearchFilters(document_ids=("doc-2",)))
    assert {hit.payload["document_id"] for hit in hits} == {"doc-2"}
    await store.upsert_turn("alice", turn("t1", "conv-1", 1))
    await store.upsert_turn("alice", turn("t2", "conv-2", 2))
    only = await store.search(Source.CHAT_HISTORY, "alice", unit(1), 10, SearchFilters(conversation_id="conv-2"))
    assert [hit.payload["turn_id"] for hit in only] == ["t2"]
    excluded = await store.search(Source.CHAT_HISTORY, "alice", unit(1), 10,
                                  SearchFilters(exclude_conversation_id="conv-1"))
    assert [hit.payload["turn_id"] for hit in excluded] == ["t2"]


async def test_delete_by_document_and_stale_chunks(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "a.pdf", [chunk(i, i) for i in range(6)])
    await store.upsert_chunks("alice", "doc-2", "b.pdf", [chunk(i, i) for i in range(2)])
    await store.delete_stale_chunks("alice", "doc-1", keep_below=4)
    assert await store.count(Source.DOCUMENTS, "alice", SearchFilters(document_ids=("doc-1",))) == 4
    await store.delete_document("alice", "doc-1")
    assert await store.count(Source.DOCUMENTS, "alice", SearchFilters(document_ids=("doc-1",))) == 0
    assert await store.count(Source.DOCUMENTS, "alice") == 2


async def test_delete_by_conversation(store) -> None:
    await store.upsert_turn("alice", turn("t1", "conv-1", 1))
    await store.upsert_turn("alice", turn("t2", "conv-1", 2))
    await store.upsert_turn("alice", turn("t3", "conv-2", 3))
    await store.delete_conversation("alice", "conv-1")
    assert await store.count(Source.CHAT_HISTORY, "alice") == 1


async def test_min_score_and_hybrid_keyword_match(store) -> None:
    texts = ["read.dta handles Stata files", "spreadsheets and Excel", "relational databases via ODBC"]
    await store.upsert_chunks("alice", "doc-1", "a.pdf", [chunk(i, 100 + i, text) for i, text in enumerate(texts)])
    # a query vector unrelated to every chunk: dense with a high threshold finds nothing
    assert await store.search(Source.DOCUMENTS, "alice", unit(999), 5, SearchFilters(), min_score=0.99) == []
    # hybrid still finds the keyword match, with a normalised score
    hits = await store.search(Source.DOCUMENTS, "alice", unit(999), 5, SearchFilters(),
                              sparse=sparse.query_vector("Stata"), min_score=0.99)
    assert [hit.payload["chunk_index"] for hit in hits] == [0]
    assert 0 < hits[0].score <= 1


async def test_dimension_mismatch_is_a_clear_error(tmp_path) -> None:
    for kind in ("edge", "qdrant-client"):
        first = make_store(kind, tmp_path / kind)
        await first.open(SPACE)
        await first.close()
        second = make_store(kind, tmp_path / kind)
        with pytest.raises(EmbeddingSpaceMismatch, match="docent reindex"):
            await second.open(EmbeddingSpace("test-model", DIM * 2))
        await second.close()


async def _store_with_one_chunk(kind: str, path, space: EmbeddingSpace) -> None:
    """A store opened for `space`, holding one chunk of alice's, closed again."""
    store = make_store(kind, path)
    await store.open(space)
    await store.upsert_chunks("alice", "doc-1", "a.pdf", [chunk(0, 0)])
    await store.close()


async def test_another_model_of_the_same_dimension_is_refused(tmp_path) -> None:
    """all-MiniLM-L6-v2 and multilingual-e5-small both give 384-d vectors: a store built by one must not
    silently take the other's queries and chunks."""
    for kind in ("edge", "qdrant-client"):
        await _store_with_one_chunk(kind, tmp_path / kind, SPACE)
        second = make_store(kind, tmp_path / kind)
        with pytest.raises(EmbeddingSpaceMismatch, match=r"built by test-model .* now other-model"):
            await second.open(EmbeddingSpace("other-model", DIM))
        await second.reset(EmbeddingSpace("other-model", DIM))  # what `docent reindex` does
        assert await second.count(Source.DOCUMENTS, "alice") == 0
        await second.close()
        third = make_store(kind, tmp_path / kind)
        await third.open(EmbeddingSpace("other-model", DIM))  # the rebuilt store records its new model
        await third.close()


async def _forget_model(store, kind: str) -> None:
    """Make the store look as it did before stores recorded their model."""
    if kind == "edge":
        for source in Source:
            (store.directory / source.collection / "embedding_model").unlink()
    else:
        for source in Source:
            await store.client.update_collection(source.collection, metadata={"embedding_model": ""})


@pytest.mark.parametrize("kind", ["edge", "qdrant-client"])
async def test_a_store_from_before_the_record_keeps_its_model_unless_it_is_newer(tmp_path, kind) -> None:
    """A store without a record was built by all-MiniLM-L6-v2 or an endpoint's model: the deployment's
    configured model keeps it (and records itself), but multilingual-e5-small, added with the record,
    cannot have built it."""
    old = make_store(kind, tmp_path / "old")
    await old.open(EmbeddingSpace("all-MiniLM-L6-v2", DIM))
    await old.upsert_chunks("alice", "doc-1", "a.pdf", [chunk(0, 0)])
    await _forget_model(old, kind)
    await old.close()
    newer = make_store(kind, tmp_path / "old")
    with pytest.raises(EmbeddingSpaceMismatch, match="built by an earlier embedding model"):
        await newer.open(EmbeddingSpace("multilingual-e5-small", DIM))
    await newer.close()
    kept = make_store(kind, tmp_path / "old")
    await kept.open(EmbeddingSpace("all-MiniLM-L6-v2", DIM))
    assert await kept.count(Source.DOCUMENTS, "alice") == 1
    await kept.close()
    recorded = make_store(kind, tmp_path / "old")
    with pytest.raises(EmbeddingSpaceMismatch, match="built by all-MiniLM-L6-v2"):
        await recorded.open(EmbeddingSpace("text-embedding-3-small", DIM))
    await recorded.close()


async def test_data_survives_reopen_and_reset_empties(tmp_path) -> None:
    for kind in ("edge", "qdrant-client"):
        await _store_with_one_chunk(kind, tmp_path / kind, SPACE)
        second = make_store(kind, tmp_path / kind)
        await second.open(SPACE)
        assert await second.count(Source.DOCUMENTS, "alice") == 1
        await second.reset(EmbeddingSpace("test-model", DIM * 2))
        assert await second.count(Source.DOCUMENTS, "alice") == 0
        await second.close()


# document versions: a replacement is written staged and switched in one operation ----------------------

def _versions_seen(hits) -> set[int]:
    return {int(hit.payload.get("version", 1)) for hit in hits}


async def _document_hits(store, user: str = "alice", document_id: str = "doc-1"):
    return await store.search(Source.DOCUMENTS, user, unit(1), 50, SearchFilters(document_ids=(document_id,)))


async def test_a_staged_version_is_invisible_until_activated_then_alone(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "v1.pdf", [chunk(i, i) for i in range(4)])
    await store.upsert_chunks("alice", "doc-1", "v2.pdf", [chunk(i, 10 + i) for i in range(3)], version=2,
                              staged=True)
    hits = await _document_hits(store)
    assert _versions_seen(hits) == {1} and len(hits) == 4
    assert await store.count(Source.DOCUMENTS, "alice") == 4
    assert await store.activate_version("alice", "doc-1", 2) == 3
    hits = await _document_hits(store)
    assert _versions_seen(hits) == {2} and {hit.payload["filename"] for hit in hits} == {"v2.pdf"}
    assert {hit.point_id for hit in hits} == {chunk_point_id("doc-1", i, 2) for i in range(3)}
    assert await store.count(Source.DOCUMENTS, "alice") == 3
    # idempotent: activating again, or rewriting the active version "staged" (a rerun), changes nothing
    assert await store.activate_version("alice", "doc-1", 2) == 3
    await store.upsert_chunks("alice", "doc-1", "v2.pdf", [chunk(i, 10 + i) for i in range(3)], version=2,
                              staged=True)
    assert _versions_seen(await _document_hits(store)) == {2}
    assert len(await _document_hits(store)) == 3


async def test_a_failed_version_is_removed_and_the_active_one_stays(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "v1.pdf", [chunk(i, i) for i in range(4)])
    await store.upsert_chunks("alice", "doc-1", "v2.pdf", [chunk(i, 10 + i) for i in range(2)], version=2,
                              staged=True)
    await store.delete_version("alice", "doc-1", 2)
    await store.delete_version("alice", "doc-1", 1)  # the searchable version: never removed this way
    assert _versions_seen(await _document_hits(store)) == {1}
    assert await store.count(Source.DOCUMENTS, "alice") == 4
    # a leftover of a failed version on the slot a later version uses must not turn visible with it
    await store.upsert_chunks("alice", "doc-1", "v2.pdf", [chunk(i, 10 + i) for i in range(6)], version=2,
                              staged=True)
    await store.upsert_chunks("alice", "doc-1", "v3.pdf", [chunk(i, 20 + i) for i in range(2)], version=3,
                              staged=True)
    assert await store.activate_version("alice", "doc-1", 3) == 2
    assert _versions_seen(await _document_hits(store)) == {3}
    # and the next replacement flips back to the other slot
    await store.upsert_chunks("alice", "doc-1", "v4.pdf", [chunk(i, 30 + i) for i in range(5)], version=4,
                              staged=True)
    assert _versions_seen(await _document_hits(store)) == {3}
    assert await store.activate_version("alice", "doc-1", 4) == 5
    assert _versions_seen(await _document_hits(store)) == {4}
    with pytest.raises(KeyError):
        await store.activate_version("alice", "doc-1", 9)


async def test_versions_are_per_tenant_and_delete_document_removes_all(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "v1.pdf", [chunk(i, i) for i in range(3)])
    await store.upsert_chunks("bob", "doc-b", "b.pdf", [chunk(i, i) for i in range(2)])
    await store.upsert_chunks("alice", "doc-1", "v2.pdf", [chunk(i, 10 + i) for i in range(2)], version=2,
                              staged=True)
    with pytest.raises(KeyError):
        await store.activate_version("bob", "doc-1", 2)
    await store.delete_version("bob", "doc-1", 2)
    assert _versions_seen(await _document_hits(store)) == {1}
    await store.delete_document("alice", "doc-1")
    for version in (1, 2):
        with pytest.raises(KeyError):
            await store.activate_version("alice", "doc-1", version)
    assert await store.count(Source.DOCUMENTS, "alice") == 0
    assert await store.count(Source.DOCUMENTS, "bob") == 2


async def test_stale_chunks_are_removed_per_version(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "v1.pdf", [chunk(i, i) for i in range(5)])
    await store.upsert_chunks("alice", "doc-1", "v2.pdf", [chunk(i, 10 + i) for i in range(3)], version=2,
                              staged=True)
    await store.delete_stale_chunks("alice", "doc-1", 2, version=2)
    assert len(await _document_hits(store)) == 5  # version 1 untouched
    assert await store.activate_version("alice", "doc-1", 2) == 2


async def _write_points_from_before_versions(store, user_id: str, document_id: str, chunks: list[ChunkRecord]) -> None:
    """Chunks as stores held them before versions existed: no version, slot or live in the payload."""
    import qdrant_edge as qe
    from qdrant_client import models

    from services.retrieval.store import DENSE, chunk_payload

    def payload(item: ChunkRecord) -> dict[str, object]:
        return {key: value for key, value in chunk_payload(user_id, document_id, "old.pdf", item).items()
                if key not in ("version", "slot", "live")}

    if isinstance(store, EdgeStore):
        points = [qe.Point(chunk_point_id(document_id, item.chunk_index), {DENSE: list(item.embedding)}, payload(item))
                  for item in chunks]
        store._shard(Source.DOCUMENTS).update(qe.UpdateOperation.upsert_points(points))
    else:
        await store.client.upsert(Source.DOCUMENTS.collection, wait=True, points=[
            models.PointStruct(id=chunk_point_id(document_id, item.chunk_index), vector={DENSE: list(item.embedding)},
                               payload=payload(item)) for item in chunks])


async def test_chunks_from_before_versions_are_version_1(store) -> None:
    await _write_points_from_before_versions(store, "alice", "doc-1", [chunk(i, i) for i in range(4)])
    assert len(await _document_hits(store)) == 4 and _versions_seen(await _document_hits(store)) == {1}
    # reprocessed as version 1 (a reindex): the same ids, and a shorter run's leftovers go
    await store.upsert_chunks("alice", "doc-1", "old.pdf", [chunk(i, i) for i in range(3)])
    await store.delete_stale_chunks("alice", "doc-1", 3)
    assert await store.count(Source.DOCUMENTS, "alice") == 3
    # replaced: staged beside them, then the only ones
    await _write_points_from_before_versions(store, "alice", "doc-2", [chunk(i, i) for i in range(4)])
    await store.upsert_chunks("alice", "doc-2", "new.pdf", [chunk(i, 10 + i) for i in range(2)], version=2,
                              staged=True)
    hits = await _document_hits(store, document_id="doc-2")
    assert len(hits) == 4 and {hit.payload["filename"] for hit in hits} == {"old.pdf"}
    assert await store.activate_version("alice", "doc-2", 2) == 2
    hits = await _document_hits(store, document_id="doc-2")
    assert {hit.payload["filename"] for hit in hits} == {"new.pdf"} and len(hits) == 2
    assert await store.count(Source.DOCUMENTS, "alice", SearchFilters(document_ids=("doc-2",))) == 2


async def test_collection_filter_and_chunks_from_before_collections(store) -> None:
    """Search by collection; chunks written without one count as their uploader's personal documents."""
    await store.upsert_chunks("alice", "doc-team", "team.pdf", [chunk(0, 1)], collection_id="team")
    await store.upsert_chunks("alice", "doc-old", "old.pdf", [chunk(0, 2)])  # no collection: from before them
    await store.upsert_chunks("bob", "doc-bob", "bob.pdf", [chunk(0, 3)], collection_id="bobs")

    async def found(user: str, collections: tuple[str, ...], legacy: bool) -> set[str]:
        filters = SearchFilters(collection_ids=collections, legacy_personal=legacy)
        return {str(hit.payload["document_id"]) for hit in await store.search(
            Source.DOCUMENTS, user, unit(1), 10, filters)}

    assert await found("bob", ("team",), False) == {"doc-team"}  # a member of alice's team, not its uploader
    assert await found("alice", ("team",), False) == {"doc-team"}
    assert await found("alice", ("personal-a",), True) == {"doc-old"}
    assert await found("bob", ("personal-b",), True) == set()  # the legacy branch is the uploader's only
    assert await found("alice", ("team", "bobs"), True) == {"doc-team", "doc-old", "doc-bob"}


async def test_owners_names_who_holds_point_ids(store) -> None:
    await store.upsert_chunks("alice", "doc-1", "a.pdf", [chunk(0, 1)])
    await store.upsert_turn("bob", turn("t-1", "conv-1", 2))
    assert await store.owners(Source.DOCUMENTS, [chunk_point_id("doc-1", 0), chunk_point_id("doc-2", 0)]) == {"alice"}
    assert await store.owners(Source.CHAT_HISTORY, [turn_point_id("t-1")]) == {"bob"}
    assert await store.owners(Source.CHAT_HISTORY, [turn_point_id("t-2")]) == set()


def test_bm25_matches_japanese_and_leaves_other_text_as_it_was() -> None:
    """CJK runs become character bigrams, so a Japanese question shares terms with its passage; text
    without CJK characters gets exactly the vector it had before."""
    import qdrant_edge as qe

    question = sparse.query_vector("データの読み込み方法を教えてください")
    passage = sparse.document_vector("Rでデータを読み込むには read.table 関数を使います。")
    unrelated = sparse.document_vector("パスワードを変更するには設定画面を開きます。")
    assert len(set(question.indices) & set(passage.indices)) >= 3
    assert len(set(question.indices) & set(passage.indices)) > len(set(question.indices) & set(unrelated.indices))
    plain = qe.Bm25()
    for text in ("How do I read data files into R?", "Die Datei wird mit read.csv gelesen.", "l'été dernier"):
        before = plain.embed_document(text)
        assert sparse.document_vector(text) == sparse.SparseVector(list(before.indices), list(before.values))
