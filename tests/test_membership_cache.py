"""A chat turn reuses the collections it resolved while the caller's membership epoch stands, and only then.

Real parts throughout: retrieval, ingest and chat gRPC servers in-process on loopback, embedded Postgres and
Redis, the ONNX embedder. ListCollections calls are counted with the ingest service's own request metric
(docent_grpc_requests_total); what a turn searched is read from the turn's stored context (the documents
seeded in each collection). Each test asks: does the next turn see a membership change at once, and does a
turn with nothing changed skip the ingest service?
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from docent.v1 import chat_pb2, chat_pb2_grpc, ingest_pb2, ingest_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.chat.app import chat_service
from services.chat.collections import Resolution, ResolutionKey, Resolutions
from services.ingest.app import ingest_service
from services.retrieval.app import retrieval_service
from services.runtime.auth import KeyGrant, mint_token
from services.runtime.config import Settings
from services.runtime.errors import error_info
from services.runtime.membership import MembershipEpochs, epoch_key
from services.runtime.names import personal_collection_id
from tests.conftest import TEST_SECRET, create_database, free_port, make_settings, running_service

LIST_COLLECTIONS = "/docent.v1.IngestService/ListCollections"
VALVE = "The Zephyrine valve must be torqued to forty-two newton metres before the first flight."
VALVE_QUESTION = "How much torque does the Zephyrine valve need before the first flight?"


@dataclass
class Stack:
    chat: chat_pb2_grpc.ChatServiceStub
    ingest: ingest_pb2_grpc.IngestServiceStub
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub
    settings: Settings  # the chat service's: its ingest and retrieval targets, the database
    ingest_port: int
    redis_url: str
    embedder: object


@pytest.fixture(scope="module")
async def stack(backing, embedder) -> AsyncIterator[Stack]:
    database_url = await create_database(backing.database_url)
    retrieval_settings = make_settings()
    async with running_service(retrieval_service(retrieval_settings, embedder=embedder),
                               retrieval_settings) as retrieval_target:
        ingest_settings = make_settings(backing, database_url=database_url, retrieval_target=retrieval_target)
        async with running_service(ingest_service(ingest_settings), ingest_settings) as ingest_target:
            settings = make_settings(backing, database_url=database_url, retrieval_target=retrieval_target,
                                     ingest_target=ingest_target)
            async with running_service(chat_service(settings), settings) as chat_target, \
                    grpc.aio.insecure_channel(chat_target) as chat_channel, \
                    grpc.aio.insecure_channel(ingest_target) as ingest_channel, \
                    grpc.aio.insecure_channel(retrieval_target) as retrieval_channel:
                yield Stack(chat_pb2_grpc.ChatServiceStub(chat_channel),
                            ingest_pb2_grpc.IngestServiceStub(ingest_channel),
                            retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel), settings,
                            int(ingest_target.rpartition(":")[2]), backing.redis_url, embedder)


def list_collections_calls() -> float:
    """ListCollections calls the ingest service served so far, whatever their outcome."""
    return sum(sample.value for family in REGISTRY.collect() if family.name == "docent_grpc_requests"
               for sample in family.samples
               if sample.name == "docent_grpc_requests_total" and sample.labels.get("service") == "ingest"
               and sample.labels.get("method") == LIST_COLLECTIONS)


@contextlib.contextmanager
def counting_list_collections() -> Iterator[list[float]]:
    """Yields a list that holds, on exit, how many ListCollections calls were served inside the block."""
    counted: list[float] = []
    before = list_collections_calls()
    yield counted
    counted.append(list_collections_calls() - before)


def new_user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def credential(user: str, *, scope: tuple[str, ...] | None = None, key_id: str = "") -> tuple[tuple[str, str]]:
    """A session token, or (scope given) the token the gateway forwards for an API key limited to `scope`."""
    grant = KeyGrant(key_id or uuid.uuid4().hex, access="read", collections=scope) if scope is not None else None
    return (("authorization", f"Bearer {mint_token(TEST_SECRET, user, 3600, key=grant)}"),)


async def seed(stack: Stack, user: str, collection_id: str, text: str) -> str:
    """A one-chunk document in the collection, indexed as the worker indexes it; its id."""
    document_id = f"doc-{uuid.uuid4().hex[:12]}"
    vector = stack.embedder.embed([text])[0]
    token = mint_token(TEST_SECRET, user, 600, collections=[collection_id])
    await stack.retrieval.UpsertChunks(retrieval_pb2.UpsertChunksRequest(
        document_id=document_id, filename=f"{document_id}.txt", embedding_model=stack.embedder.model_name,
        collection_id=collection_id, document_chunk_count=1,
        chunks=[retrieval_pb2.Chunk(chunk_index=0, text=text, page_start=1, page_end=1, embedding=list(vector))]),
        metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    return document_id


async def searched(chat: chat_pb2_grpc.ChatServiceStub, user: str, query: str = VALVE_QUESTION,
                   metadata: tuple[tuple[str, str]] | None = None, **options) -> set[str]:
    """The documents one chat turn found (its stored context)."""
    reply = await chat.Chat(chat_pb2.ChatRequest(query=query, options=chat_pb2.ChatOptions(**options)),
                            metadata=metadata or credential(user), timeout=60)
    return {item.document.document_id for item in reply.turn.context
            if item.source == retrieval_pb2.SEARCH_SOURCE_DOCUMENTS}


async def create_collection(stack: Stack, owner: str, name: str) -> str:
    reply = await stack.ingest.CreateCollection(ingest_pb2.CreateCollectionRequest(name=name),
                                                metadata=credential(owner), timeout=10)
    return reply.collection.id


async def share(stack: Stack, owner: str, collection_id: str, member: str,
                role: int = ingest_pb2.COLLECTION_ROLE_VIEWER) -> None:
    await stack.ingest.SetCollectionMember(ingest_pb2.SetCollectionMemberRequest(
        collection_id=collection_id, user_id=member, role=role), metadata=credential(owner), timeout=10)


async def unshare(stack: Stack, owner: str, collection_id: str, member: str) -> None:
    await stack.ingest.DeleteCollectionMember(ingest_pb2.DeleteCollectionMemberRequest(
        collection_id=collection_id, user_id=member), metadata=credential(owner), timeout=10)


async def team_with_document(stack: Stack, owner: str) -> tuple[str, str]:
    team = await create_collection(stack, owner, "Flight ops")
    return team, await seed(stack, owner, team, VALVE)


async def test_the_next_turn_of_the_same_user_does_not_ask_the_ingest_service(stack: Stack) -> None:
    alice = new_user("alice")
    team, valve = await team_with_document(stack, alice)
    with counting_list_collections() as first:
        assert valve in await searched(stack.chat, alice)
    with counting_list_collections() as again:
        for _ in range(3):
            assert valve in await searched(stack.chat, alice)
    assert first == [1] and again == [0]

    # the collections a turn names are part of what is kept: a new choice asks once, then is kept too
    with counting_list_collections() as named:
        assert valve in await searched(stack.chat, alice, collection_ids=[team])
        assert valve in await searched(stack.chat, alice, collection_ids=[team])
    assert named == [1]
    with counting_list_collections() as personal_only:
        assert valve not in await searched(stack.chat, alice, collection_ids=[personal_collection_id(alice)])
    assert personal_only == [1]

    # a collection the caller cannot read is NOT_FOUND at every turn: refusals are not kept
    stranger = new_user("stranger")
    with counting_list_collections() as refused:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await searched(stack.chat, stranger, collection_ids=[team])
            assert error_info(raised.value).reason == "COLLECTION_NOT_FOUND"
    assert refused == [2]


async def test_membership_changes_hold_from_the_very_next_turn(stack: Stack) -> None:
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    team, valve = await team_with_document(stack, alice)
    for user in (bob, carol):  # each has a kept resolution without the team
        assert valve not in await searched(stack.chat, user)
        with counting_list_collections() as kept:
            assert valve not in await searched(stack.chat, user)
        assert kept == [0]

    await share(stack, alice, team, bob)  # shared: bob's next turn searches it
    with counting_list_collections() as after_share:
        assert valve in await searched(stack.chat, bob)
        assert valve in await searched(stack.chat, bob)
    assert after_share == [1]

    await share(stack, alice, team, bob, ingest_pb2.COLLECTION_ROLE_EDITOR)  # a new role: resolved again
    with counting_list_collections() as after_role:
        assert valve in await searched(stack.chat, bob)
    assert after_role == [1]

    await unshare(stack, alice, team, bob)  # removed: bob's next turn no longer searches it
    with counting_list_collections() as after_removal:
        assert valve not in await searched(stack.chat, bob)
    assert after_removal == [1]

    # alice's own new collection: her next turn searches it
    assert valve in await searched(stack.chat, alice)
    fresh = await create_collection(stack, alice, "Ground ops")
    pump = await seed(stack, alice, fresh, "The Marlowe pump is primed with glycol every second Tuesday.")
    assert pump in await searched(stack.chat, alice, "When is the Marlowe pump primed with glycol?")

    # a deleted collection is gone for every member at once
    await share(stack, alice, team, bob)
    await share(stack, alice, team, carol)
    for user in (alice, bob, carol):
        assert valve in await searched(stack.chat, user)
    await stack.ingest.DeleteCollection(ingest_pb2.DeleteCollectionRequest(collection_id=team),
                                        metadata=credential(alice), timeout=10)
    with counting_list_collections() as after_delete:
        for user in (alice, bob, carol):
            assert valve not in await searched(stack.chat, user)
    assert after_delete == [3]


async def test_api_key_scopes_of_one_user_keep_their_own_resolutions(stack: Stack) -> None:
    alice = new_user("alice")
    team, valve = await team_with_document(stack, alice)
    personal = personal_collection_id(alice)
    notes = await seed(stack, alice, personal, "The Zephyrine valve manual sits on the second shelf.")
    assert {valve, notes} <= await searched(stack.chat, alice)
    assert {valve, notes} <= await searched(stack.chat, alice)

    # a key limited to the personal collection: resolved for that scope, never the session's resolution
    personal_key = credential(alice, scope=(personal,))
    with counting_list_collections() as scoped:
        found = await searched(stack.chat, alice, metadata=personal_key)
        assert notes in found and valve not in found
        found = await searched(stack.chat, alice, metadata=personal_key)
        assert notes in found and valve not in found
    assert scoped == [1]

    team_key = credential(alice, scope=(team,))
    with counting_list_collections() as other_scope:
        found = await searched(stack.chat, alice, metadata=team_key)
        assert valve in found and notes not in found
    assert other_scope == [1]

    # another key with the same scope finds the same collections: it may share the resolution
    with counting_list_collections() as same_scope:
        found = await searched(stack.chat, alice, metadata=credential(alice, scope=(personal,)))
        assert notes in found and valve not in found
    assert same_scope == [0]


async def test_a_change_committed_while_a_turn_resolves_is_seen_by_the_next_turn(stack: Stack) -> None:
    """The epoch a resolution is kept under is the one read before ListCollections: here bob is added while
    his turn's ListCollections reply is on its way back, so that turn does not see the team (it asked
    before), and the next one must."""
    alice, bob = new_user("alice"), new_user("bob")
    team, valve = await team_with_document(stack, alice)
    async with HoldingProxy(stack.ingest_port) as proxy:
        settings = stack.settings.model_copy(update={"ingest_target": f"127.0.0.1:{proxy.port}"})
        async with running_service(chat_service(settings), settings) as target, \
                grpc.aio.insecure_channel(target) as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel)
            await searched(chat, new_user("warm-up"))  # the chat → ingest connection is up
            served = list_collections_calls()
            proxy.hold()
            turn = asyncio.create_task(searched(chat, bob))
            await until(lambda: list_collections_calls() > served, "ListCollections answered")
            await share(stack, alice, team, bob)  # committed, epoch advanced, before the reply reaches chat
            proxy.release()
            assert valve not in await turn
            assert valve in await searched(chat, bob)


async def test_an_epoch_lost_by_redis_never_revives_a_kept_resolution(stack: Stack) -> None:
    """A Redis that restarts empty (or expires the key) starts the user's epoch over: a counter would count
    to a value a resolution was kept under; a random epoch never meets one again."""
    alice = new_user("alice")
    _, valve = await team_with_document(stack, alice)
    assert valve in await searched(stack.chat, alice)
    redis = aioredis.from_url(stack.redis_url)
    try:
        assert await redis.delete(epoch_key(alice)) == 1
    finally:
        await redis.aclose()
    second = await create_collection(stack, alice, "Ground ops")
    pump = await seed(stack, alice, second, "The Marlowe pump is primed with glycol every second Tuesday.")
    assert pump in await searched(stack.chat, alice, "When is the Marlowe pump primed with glycol?")


async def test_without_redis_every_turn_asks_the_ingest_service(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    alice, bob = new_user("alice"), new_user("bob")
    team, valve = await team_with_document(stack, alice)
    async with running_service(chat_service(settings), settings, wait_serving=False) as target, \
            grpc.aio.insecure_channel(target) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        await until_started(chat, bob)  # started, NOT_SERVING: Redis is down
        with counting_list_collections() as each_turn:
            for _ in range(3):
                assert valve not in await searched(chat, bob)
        assert each_turn == [3]
        await share(stack, alice, team, bob)
        assert valve in await searched(chat, bob)
        await unshare(stack, alice, team, bob)
        assert valve not in await searched(chat, bob)


async def test_an_epoch_is_created_by_its_first_reader_and_replaced_by_each_change(backing) -> None:
    epochs = MembershipEpochs(backing.redis_url)
    try:
        user = new_user("dora")
        first = await epochs.current(user)
        assert first and await epochs.current(user) == first
        await epochs.advance([user, user])
        second = await epochs.current(user)
        assert second and second != first
    finally:
        await epochs.close()


async def test_without_redis_there_is_no_epoch_and_a_change_still_succeeds() -> None:
    epochs = MembershipEpochs(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await epochs.current("dora") is None
        await epochs.advance(["dora"])  # logged, not raised: the change it follows is committed
    finally:
        await epochs.close()


async def test_kept_resolutions_are_bounded_least_recently_used_first_and_age_out() -> None:
    kept = Resolutions(max_entries=2, max_age=0.3)
    keys = [ResolutionKey(f"user-{i}", None, ()) for i in range(3)]
    now = time.monotonic()
    for key in keys[:2]:
        kept.put(key, Resolution("e1", (key.user_id,), now))
    assert kept.get(keys[0], "e1") == ("user-0",)  # used: user-1 is now the least recently used
    assert kept.get(keys[0], "e2") is None  # another epoch: not this resolution
    kept.put(keys[2], Resolution("e1", ("user-2",), now))
    assert len(kept) == 2 and kept.get(keys[1], "e1") is None and kept.get(keys[2], "e1") == ("user-2",)
    await asyncio.sleep(0.4)
    assert kept.get(keys[0], "e1") is None and kept.get(keys[2], "e1") is None


async def until(condition, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not seen within {timeout}s: {what}")
        await asyncio.sleep(0.01)


async def until_started(chat: chat_pb2_grpc.ChatServiceStub, user: str) -> None:
    for _ in range(400):
        try:
            await searched(chat, user)
            return
        except grpc.aio.AioRpcError as error:
            assert error_info(error).reason == "SERVICE_STARTING", error
            await asyncio.sleep(0.05)
    raise AssertionError("the chat service did not start")


class HoldingProxy:
    """A loopback TCP proxy to a port whose replies (server → client bytes) can be held back and released."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        for task in (asyncio.create_task(self._pipe(client_reader, upstream_writer, gated=False)),
                     asyncio.create_task(self._pipe(upstream_reader, client_writer, gated=True))):
            self._tasks.add(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, gated: bool) -> None:
        try:
            while data := await reader.read(65536):
                if gated:
                    await self._open.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
