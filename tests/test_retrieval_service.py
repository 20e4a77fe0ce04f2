"""RetrievalService over real gRPC, with the real ONNX model and the embedded engine."""

from __future__ import annotations

import uuid

import grpc
import pytest

from docent.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.app import retrieval_service
from services.runtime.errors import error_info
from tests.conftest import auth, make_settings, running_service

FACTS = [
    "Q3 revenue was $5M, driven by enterprise subscriptions.",
    "Q2 revenue was $4.2M after the spring price change.",
    "The office cafeteria serves lunch from noon to two.",
    "Our headcount grew to 42 engineers this year.",
    "The data import manual explains read.csv and read.table.",
    "Stata files are read with read.dta from the foreign package.",
    "Employees get 25 days of paid vacation per year.",
    "The marketing budget for next year is $1.1M.",
    "Customer churn fell to 3% in the last quarter.",
    "The board meets on the first Monday of each month.",
    "Revenue forecasts for Q4 point to $5.5M.",
    "Profit margins improved to 18% in Q3.",
]


@pytest.fixture(scope="module")
async def retrieval(embedder):
    settings = make_settings()
    async with running_service(retrieval_service(settings, embedder=embedder), settings) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            yield retrieval_pb2_grpc.RetrievalServiceStub(channel), embedder


async def index_facts(stub, embedder, user: str, document_id: str, facts=FACTS) -> None:
    vectors = embedder.embed(facts)
    chunks = [retrieval_pb2.Chunk(chunk_index=i, text=text, page_start=i + 1, page_end=i + 1,
                                  embedding=list(vectors[i])) for i, text in enumerate(facts)]
    reply = await stub.UpsertChunks(retrieval_pb2.UpsertChunksRequest(
        document_id=document_id, filename="facts.pdf", chunks=chunks, embedding_model=embedder.model_name,
        document_chunk_count=len(chunks)), metadata=auth(user), timeout=30)
    assert reply.upserted_count == len(facts)


async def index_turn(stub, embedder, user: str, conversation_id: str, question: str, answer: str) -> str:
    turn_id = str(uuid.uuid4())
    vector = embedder.embed([f"User: {question}\nAssistant: {answer}"])[0]
    await stub.UpsertChatTurn(retrieval_pb2.UpsertChatTurnRequest(
        turn_id=turn_id, conversation_id=conversation_id, user_message=question, assistant_message=answer,
        embedding=list(vector), embedding_model=embedder.model_name), metadata=auth(user), timeout=30)
    return turn_id


async def test_search_finds_the_right_chunk_with_explain(retrieval) -> None:
    stub, embedder = retrieval
    user = f"u-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, user, f"doc-facts-{user}")
    reply = await stub.Search(retrieval_pb2.SearchRequest(query="What was the Q3 revenue?"), metadata=auth(user),
                              timeout=30)
    top = reply.results[0]
    assert "Q3 revenue was $5M" in top.text
    assert top.source == retrieval_pb2.SEARCH_SOURCE_DOCUMENTS
    assert top.document.filename == "facts.pdf" and top.document.page_start == 1
    assert top.rank == 1 and top.source_rank == 1 and top.weight == pytest.approx(0.7)
    assert top.weighted_score == pytest.approx(0.7 * top.score)
    assert not reply.chat_context_used
    assert reply.document_slots == 7 and reply.chat_history_slots == 3
    assert reply.weights.documents == pytest.approx(0.7)
    # no chat history: every slot goes to documents that pass the threshold
    assert all(result.source == retrieval_pb2.SEARCH_SOURCE_DOCUMENTS for result in reply.results)
    again = await stub.Search(retrieval_pb2.SearchRequest(query="What was the Q3 revenue?"), metadata=auth(user),
                              timeout=30)
    assert again.timings.embedding_cached


async def test_chat_history_is_merged_and_flags_context(retrieval) -> None:
    stub, embedder = retrieval
    user = f"u-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, user, f"doc-facts-{user}")
    for index in range(4):
        await index_turn(stub, embedder, user, "conv-1", f"What is our Q3 revenue? (asked {index})",
                         "Q3 revenue was $5M [1].")
    reply = await stub.Search(retrieval_pb2.SearchRequest(query="Q3 revenue"), metadata=auth(user), timeout=30)
    sources = [result.source for result in reply.results]
    documents = sources.count(retrieval_pb2.SEARCH_SOURCE_DOCUMENTS)
    chat_items = sources.count(retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY)
    # 3 slots for chat history, plus any document slots left without relevant documents
    assert chat_items == (3 if documents >= 7 else min(4, 10 - documents))
    assert chat_items >= 3 and len(sources) <= 10
    assert reply.chat_context_used
    chat = next(r for r in reply.results if r.source == retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY)
    assert chat.chat_turn.conversation_id == "conv-1" and chat.text.startswith("User: ")
    assert chat.weight == pytest.approx(0.3)
    # per-request weights: documents only, then chat only; and exclusion of the conversation
    only_docs = await stub.Search(retrieval_pb2.SearchRequest(
        query="Q3 revenue", weights=retrieval_pb2.SourceWeights(documents=1, chat_history=0)),
        metadata=auth(user), timeout=30)
    assert not only_docs.chat_context_used
    only_chat = await stub.Search(retrieval_pb2.SearchRequest(
        query="Q3 revenue", weights=retrieval_pb2.SourceWeights(documents=0, chat_history=1)),
        metadata=auth(user), timeout=30)
    assert {r.source for r in only_chat.results} == {retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY}
    excluded = await stub.Search(retrieval_pb2.SearchRequest(query="Q3 revenue", exclude_conversation_id="conv-1"),
                                 metadata=auth(user), timeout=30)
    assert not excluded.chat_context_used


async def test_users_never_see_each_other(retrieval) -> None:
    stub, embedder = retrieval
    alice, bob = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, alice, "doc-alice")
    await index_turn(stub, embedder, alice, "conv-alice", "secret plan?", "The secret plan is Q3 revenue.")
    for request in (retrieval_pb2.SearchRequest(query="Q3 revenue"),
                    retrieval_pb2.SearchRequest(query="Q3 revenue", document_ids=["doc-alice"]),
                    retrieval_pb2.SearchRequest(query="secret plan", conversation_id="conv-alice"),
                    retrieval_pb2.SearchRequest(query="Q3 revenue", mode=retrieval_pb2.SEARCH_MODE_HYBRID)):
        reply = await stub.Search(request, metadata=auth(bob), timeout=30)
        assert list(reply.results) == []
    # bob's deletes cannot touch alice's data
    await stub.DeleteDocumentChunks(retrieval_pb2.DeleteDocumentChunksRequest(document_id="doc-alice"),
                                    metadata=auth(bob), timeout=30)
    await stub.DeleteConversationMemory(retrieval_pb2.DeleteConversationMemoryRequest(conversation_id="conv-alice"),
                                        metadata=auth(bob), timeout=30)
    reply = await stub.Search(retrieval_pb2.SearchRequest(query="Q3 revenue"), metadata=auth(alice), timeout=30)
    assert reply.results and reply.chat_context_used


async def test_deletes_remove_vectors(retrieval) -> None:
    stub, embedder = retrieval
    user = f"u-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, user, "doc-1")
    await index_turn(stub, embedder, user, "conv-1", "What is our Q3 revenue?", "Q3 revenue was $5M.")
    await stub.DeleteDocumentChunks(retrieval_pb2.DeleteDocumentChunksRequest(document_id="doc-1"),
                                    metadata=auth(user), timeout=30)
    await stub.DeleteConversationMemory(retrieval_pb2.DeleteConversationMemoryRequest(conversation_id="conv-1"),
                                        metadata=auth(user), timeout=30)
    reply = await stub.Search(retrieval_pb2.SearchRequest(query="Q3 revenue"), metadata=auth(user), timeout=30)
    assert list(reply.results) == []


@pytest.mark.parametrize(("request_kwargs", "reason"), [
    ({"query": "  "}, "QUERY_REQUIRED"),
    ({"query": "x", "top_k": 101}, "TOP_K_OUT_OF_RANGE"),
    ({"query": "x", "weights": retrieval_pb2.SourceWeights(documents=0, chat_history=0)}, "WEIGHTS_ALL_ZERO"),
    ({"query": "x", "weights": retrieval_pb2.SourceWeights(documents=1.5)}, "WEIGHT_OUT_OF_RANGE"),
])
async def test_bad_search_requests(retrieval, request_kwargs, reason) -> None:
    stub, _ = retrieval
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Search(retrieval_pb2.SearchRequest(**request_kwargs), metadata=auth("u"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).reason == reason


async def test_wrong_dimension_or_model_is_rejected(retrieval) -> None:
    stub, _ = retrieval
    bad = retrieval_pb2.UpsertChunksRequest(document_id="d",
                                            chunks=[retrieval_pb2.Chunk(text="x", embedding=[0.1] * 3)])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.UpsertChunks(bad, metadata=auth("u"), timeout=30)
    assert error_info(raised.value).reason == "EMBEDDING_DIMENSION_MISMATCH"
    other_model = retrieval_pb2.UpsertChunksRequest(document_id="d", embedding_model="text-embedding-3-large")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.UpsertChunks(other_model, metadata=auth("u"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_reprocessing_with_fewer_chunks_leaves_no_stale_ones(retrieval) -> None:
    stub, embedder = retrieval
    user = f"u-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, user, "doc-1")
    await index_facts(stub, embedder, user, "doc-1", facts=FACTS[:2])
    reply = await stub.Search(retrieval_pb2.SearchRequest(query="cafeteria lunch", top_k=20, min_score_documents=-1),
                              metadata=auth(user), timeout=30)
    assert sorted(r.document.chunk_index for r in reply.results) == [0, 1]


async def test_concurrent_queries_share_model_calls_and_get_their_own_vectors(embedder) -> None:
    import asyncio

    import numpy as np

    from services.retrieval.servicer import QueryEmbeddingCache

    cache = QueryEmbeddingCache(embedder)
    queries = [f"question number {number} about revenue" for number in range(24)]
    results = await asyncio.gather(*(cache.get(query) for query in queries))
    assert cache.model_calls < len(queries)  # batched while the model was busy
    alone = embedder.embed(queries)
    for (vector, cached), expected in zip(results, alone, strict=True):
        assert not cached
        assert np.allclose(vector, expected, atol=1e-3)
    again, cached = await cache.get(queries[0])
    assert cached and np.allclose(again, alone[0], atol=1e-3)
