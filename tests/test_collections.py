"""Shared collections end to end, against a real `docent up` (gateway, ingest, retrieval, chat, worker on
embedded Postgres/Redis/qdrant-edge and the local ONNX model): roles decide who reads, uploads, deletes and
shares; search and chat follow membership at once (a removed member stops seeing a collection on the next
request); an API key scoped to a collection reaches only it; chat memory stays its user's own."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import httpx
import pytest

from docent.v1 import chat_pb2, chat_pb2_grpc
from services.runtime.names import personal_collection_id
from tests.stack import start_up

TEAM_FACT = b"The Zephyrine valve must be torqued to forty-two newton metres before the first flight."
PRIVATE_FACT = b"Alice keeps the spare Quillon badge in the third drawer of the oak cabinet."
BOB_FACT = b"The Marlowe pump is primed with glycol every second Tuesday by the night crew."


@pytest.fixture(scope="module")
def up():
    up = start_up()
    try:
        up.wait_for("Docent is up", 180)
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
async def client(up):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{up.ports['gateway']}", timeout=120) as client:
        yield client


class Member:
    def __init__(self, client: httpx.AsyncClient, body: dict) -> None:
        self.client = client
        self.token = body["access_token"]
        self.id = body["user"]["id"]
        self.email = body["user"]["email"]

    async def call(self, method: str, path: str, credential: str | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {credential or self.token}"}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def upload(self, name: str, content: bytes, collection_id: str = "", credential: str | None = None):
        params = {"collection_id": collection_id} if collection_id else {}
        return await self.call("POST", "/api/upload/", credential, params=params,
                               files={"file": (name, content, "text/plain")})

    async def indexed(self, document_id: str) -> None:
        for _ in range(600):
            status = (await self.call("GET", f"/api/upload/{document_id}/status")).json()
            if status["status"] in ("completed", "failed"):
                assert status["status"] == "completed", status
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{document_id} not indexed")

    async def cited(self, query: str, credential: str | None = None, **options) -> set[str]:
        reply = await self.call("POST", "/api/chat/", credential, json={"query": query, **options})
        assert reply.status_code == 200, reply.text
        return {source["document_id"] for source in reply.json()["sources"]}


async def signup(client: httpx.AsyncClient, name: str) -> Member:
    reply = await client.post("/api/auth/signup", json={
        "email": f"{name}-{uuid.uuid4().hex[:8]}@example.com", "username": name, "password": "password-123"})
    assert reply.status_code == 201, reply.text
    return Member(client, reply.json())


@pytest.fixture(scope="module")
async def world(client):
    alice, bob = await signup(client, "alice"), await signup(client, "bob")
    team = await alice.call("POST", "/api/collections/", json={"name": "  Flight   ops "})
    assert team.status_code == 201, team.text
    team = team.json()
    assert (team["name"], team["role"], team["personal"], team["member_count"]) == ("Flight ops", "owner", False, 1)
    shared = (await alice.upload("valve.txt", TEAM_FACT, team["id"])).json()
    private = (await alice.upload("badge.txt", PRIVATE_FACT)).json()
    assert shared["collection_id"] == team["id"] and private["collection_id"] == personal_collection_id(alice.id)
    await alice.indexed(shared["id"])
    await alice.indexed(private["id"])
    return alice, bob, team["id"], shared["id"], private["id"]


async def test_a_collection_is_invisible_until_shared_then_follows_the_role(world) -> None:
    alice, bob, team, shared, private = world
    # not a member: the collection and its documents do not exist for bob
    assert (await bob.call("GET", f"/api/collections/{team}")).status_code == 404
    assert (await bob.call("GET", f"/api/upload/{shared}")).status_code == 404
    assert (await bob.upload("x.txt", b"hello there", team)).json()["reason"] == "COLLECTION_NOT_FOUND"
    assert shared not in await bob.cited("How much torque does the Zephyrine valve need?")
    listing = (await bob.call("GET", "/api/collections/")).json()["collections"]
    assert [(item["personal"], item["role"]) for item in listing] == [(True, "owner")]

    # viewer: reads, searches and chats over the collection; cannot change it
    added = await alice.call("POST", f"/api/collections/{team}/members", json={"email": bob.email, "role": "viewer"})
    assert added.status_code == 200 and added.json()["email"] == bob.email and added.json()["role"] == "viewer"
    assert shared in await bob.cited("How much torque does the Zephyrine valve need?")
    assert private not in await bob.cited("Where is the spare Quillon badge kept?")  # alice's personal one
    bob_docs = {doc["id"] for doc in (await bob.call("GET", "/api/upload/")).json()}
    assert shared in bob_docs and private not in bob_docs
    only_team = (await bob.call("GET", "/api/upload/", params={"collection_id": team})).json()
    assert [doc["id"] for doc in only_team] == [shared]
    for method, path, kwargs in (("DELETE", f"/api/upload/{shared}", {}),
                                 ("PUT", f"/api/upload/{shared}", {"files": {"file": ("v.txt", b"new", "text/plain")}}),
                                 ("PATCH", f"/api/collections/{team}", {"json": {"name": "mine"}}),
                                 ("POST", f"/api/collections/{team}/members",
                                  {"json": {"email": alice.email, "role": "viewer"}})):
        reply = await bob.call(method, path, **kwargs)
        assert reply.status_code == 403 and reply.json()["reason"] == "COLLECTION_ROLE_REQUIRED", (method, path)
    refused = await bob.upload("b.txt", BOB_FACT, team)
    assert refused.status_code == 403 and refused.json()["reason"] == "COLLECTION_ROLE_REQUIRED"

    # editor: uploads into it and deletes from it; alice sees what bob added
    await alice.call("POST", f"/api/collections/{team}/members", json={"email": bob.email, "role": "editor"})
    pump = await bob.upload("pump.txt", BOB_FACT, team)
    assert pump.status_code == 202, pump.text
    await bob.indexed(pump.json()["id"])
    assert pump.json()["id"] in await alice.cited("When is the Marlowe pump primed?")
    assert (await bob.call("DELETE", f"/api/upload/{pump.json()['id']}")).status_code == 204
    assert pump.json()["id"] not in await alice.cited("When is the Marlowe pump primed?")  # its chunks went too

    members = (await bob.call("GET", f"/api/collections/{team}/members")).json()["members"]
    assert {(member["email"], member["role"]) for member in members} == {(alice.email, "owner"), (bob.email, "editor")}

    # removed: gone on the very next request
    assert (await alice.call("DELETE", f"/api/collections/{team}/members/{bob.id}")).status_code == 204
    assert shared not in await bob.cited("How much torque does the Zephyrine valve need?")
    assert (await bob.call("GET", f"/api/upload/{shared}")).status_code == 404


async def test_chat_memory_is_never_shared(world) -> None:
    alice, bob, team, *_ = world
    await alice.call("POST", f"/api/collections/{team}/members", json={"email": bob.email, "role": "viewer"})
    try:
        secret = f"My locker code is {uuid.uuid4().hex[:6]}, remember it."
        assert (await alice.call("POST", "/api/chat/", json={"query": secret})).status_code == 200
        await asyncio.sleep(1.0)  # memory is indexed in the background
        reply = (await bob.call("POST", "/api/chat/", json={"query": "What is the locker code?", "explain": True}))
        body = reply.json()
        assert body["chat_context_used"] is False
        assert all(item["source"] != "chat_history" for item in body.get("context", []))
        titles = [item["title"] for item in (await bob.call("GET", "/api/chat/conversations")).json()["conversations"]]
        assert titles and not any("locker code is" in title for title in titles)  # bob's own only
    finally:
        await alice.call("DELETE", f"/api/collections/{team}/members/{bob.id}")


async def test_chat_can_be_limited_to_collections(world) -> None:
    alice, _, team, shared, private = world
    question = "Where is the spare Quillon badge kept, and what torque does the Zephyrine valve need?"
    everything = await alice.cited(question)
    assert {shared, private} <= everything
    assert private not in await alice.cited(question, collection_ids=[team])
    assert shared not in await alice.cited(question, collection_ids=[personal_collection_id(alice.id)])
    foreign = await alice.call("POST", "/api/chat/", json={"query": question, "collection_ids": [str(uuid.uuid4())]})
    assert foreign.status_code == 404 and foreign.json()["reason"] == "COLLECTION_NOT_FOUND"


async def test_an_api_key_scoped_to_a_collection_reaches_only_it(up, world) -> None:
    alice, bob, team, shared, private = world
    created = await alice.call("POST", "/api/keys/", json={"name": "team bot", "access": "read",
                                                           "collection_ids": [team]})
    assert created.status_code == 201 and created.json()["collection_ids"] == [team]
    key = created.json()["key"]
    listed = {doc["id"] for doc in (await alice.call("GET", "/api/upload/", key)).json()}
    assert listed == {shared}
    assert (await alice.call("GET", f"/api/upload/{private}", key)).status_code == 404
    assert [item["id"] for item in (await alice.call("GET", "/api/collections/", key)).json()["collections"]] == [team]
    question = "Where is the spare Quillon badge kept, and what torque does the Zephyrine valve need?"
    assert await alice.cited(question, key) <= {shared}
    # the same over gRPC with the key itself
    async with grpc.aio.insecure_channel(f"127.0.0.1:{up.ports['chat']}") as channel:
        reply = await chat_pb2_grpc.ChatServiceStub(channel).Chat(
            chat_pb2.ChatRequest(query=question), metadata=(("authorization", f"Bearer {key}"),))
    assert {source.document_id for source in reply.turn.sources} <= {shared}
    assert shared in {source.document_id for source in reply.turn.sources}
    # bob, a member, over gRPC with his own API key: the shared collection's documents answer him
    await alice.call("POST", f"/api/collections/{team}/members", json={"email": bob.email, "role": "viewer"})
    try:
        bob_key = (await bob.call("POST", "/api/keys/", json={"name": "bob bot"})).json()["key"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{up.ports['chat']}") as channel:
            reply = await chat_pb2_grpc.ChatServiceStub(channel).Chat(
                chat_pb2.ChatRequest(query=question), metadata=(("authorization", f"Bearer {bob_key}"),))
        cited = {source.document_id for source in reply.turn.sources}
        assert shared in cited and private not in cited
    finally:
        await alice.call("DELETE", f"/api/collections/{team}/members/{bob.id}")
    # read-only and scoped: no upload, no new collection
    assert (await alice.upload("k.txt", b"key upload", team, key)).json()["reason"] == "API_KEY_READ_ONLY"
    assert (await alice.call("POST", "/api/collections/", key, json={"name": "x"})).status_code == 403


async def test_collection_lifecycle_rules(world) -> None:
    alice, bob, team, shared, _ = world
    personal = personal_collection_id(alice.id)
    for method, path, kwargs, reason in (
            ("DELETE", f"/api/collections/{team}", {}, "COLLECTION_NOT_EMPTY"),
            ("DELETE", f"/api/collections/{personal}", {}, "PERSONAL_COLLECTION"),
            ("PATCH", f"/api/collections/{personal}", {"json": {"name": "x"}}, "PERSONAL_COLLECTION"),
            ("POST", f"/api/collections/{personal}/members", {"json": {"email": bob.email, "role": "viewer"}},
             "PERSONAL_COLLECTION"),
            ("DELETE", f"/api/collections/{team}/members/{alice.id}", {}, "LAST_OWNER")):
        reply = await alice.call(method, path, **kwargs)
        assert reply.status_code == 409 and reply.json()["reason"] == reason, (method, path, reply.text)
    unknown = await alice.call("POST", f"/api/collections/{team}/members",
                               json={"email": "nobody-here@example.com", "role": "viewer"})
    assert unknown.status_code == 404 and unknown.json()["reason"] == "USER_NOT_FOUND"
    renamed = await alice.call("PATCH", f"/api/collections/{team}", json={"name": "Flight operations"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Flight operations"

    spare = (await alice.call("POST", "/api/collections/", json={"name": "Scratch"})).json()
    assert (await alice.call("DELETE", f"/api/collections/{spare['id']}")).status_code == 204
    assert (await alice.call("GET", f"/api/collections/{spare['id']}")).status_code == 404
    assert (await alice.call("GET", f"/api/upload/{shared}")).status_code == 200


async def test_the_migration_and_the_code_name_personal_collections_alike(backing) -> None:
    conn = await asyncpg.connect(backing.database_url)
    try:
        for user_id in ("u1", "5d2e8f8a-1b7c-4a0e-8f5e-3c9d2a1b0c4d"):
            derived = await conn.fetchval("SELECT md5('docent-personal:' || $1::text)::uuid", user_id)
            assert str(derived) == personal_collection_id(user_id)
    finally:
        await conn.close()


async def test_collections_and_members_come_in_pages(client) -> None:
    owner, guest = await signup(client, "pager"), await signup(client, "guest")
    for name in ("delta", "Alpha", "charlie", "bravo"):
        assert (await owner.call("POST", "/api/collections/", json={"name": name})).status_code == 201
    pages, token = [], None
    while True:
        reply = (await owner.call("GET", "/api/collections/", params={"limit": 2, **({"page_token": token}
                                                                                   if token else {})})).json()
        pages.append([item["name"] for item in reply["collections"]])
        token = reply["next_page_token"]
        if token is None:
            break
    assert pages == [["Personal", "Alpha"], ["bravo", "charlie"], ["delta"]]  # personal first, then by name
    bad = await owner.call("GET", "/api/collections/", params={"page_token": "bm90LWEtdG9rZW4"})
    assert bad.status_code == 400 and bad.json()["reason"] == "PAGE_TOKEN_INVALID"

    team = (await owner.call("GET", "/api/collections/", params={"limit": 2})).json()["collections"][1]["id"]
    await owner.call("POST", f"/api/collections/{team}/members", json={"email": guest.email, "role": "viewer"})
    first = (await owner.call("GET", f"/api/collections/{team}/members", params={"limit": 1})).json()
    second = (await owner.call("GET", f"/api/collections/{team}/members",
                               params={"limit": 1, "page_token": first["next_page_token"]})).json()
    assert [m["email"] for m in first["members"] + second["members"]] == [owner.email, guest.email]
    assert second["next_page_token"] is None



async def test_migration_puts_existing_documents_in_their_uploaders_personal_collections(backing) -> None:
    """A database from before collections, with documents: after migration 0006 each uploader has a personal
    collection holding their documents, as its owner, and the same bytes may then live in two collections."""
    from services.runtime.db import load_migrations
    from tests.conftest import create_database

    url = await create_database(backing.database_url, migrated=False)
    conn = await asyncpg.connect(url)
    try:
        before, collections_sql = [], None
        for migration in load_migrations("ingest"):
            if migration.name == "collections":
                collections_sql = migration.sql
                break
            before.append(migration.sql)
        assert collections_sql is not None
        for sql in before:
            await conn.execute(sql)
        users = ("u1", "5d2e8f8a-1b7c-4a0e-8f5e-3c9d2a1b0c4d")
        for user, sha in ((users[0], "a" * 64), (users[0], "b" * 64), (users[1], "a" * 64)):
            await conn.execute(
                """INSERT INTO documents (id, user_id, filename, mime_type, file_size, sha256)
                   VALUES ($1, $2, 'f.txt', 'text/plain', 1, $3)""", uuid.uuid4(), user, sha)
        await conn.execute(collections_sql)
        rows = await conn.fetch("SELECT user_id, collection_id FROM documents")
        assert {str(row["collection_id"]) for row in rows if row["user_id"] == "u1"} == {personal_collection_id("u1")}
        owners = await conn.fetch("""SELECT c.id, c.personal, m.user_id, m.role FROM collections c
                                     JOIN collection_members m ON m.collection_id = c.id""")
        assert {(str(row["id"]), row["personal"], row["user_id"], row["role"]) for row in owners} == {
            (personal_collection_id(user), True, user, "owner") for user in users}
        assert await conn.fetchval("SELECT count(*) FROM documents WHERE collection_id IS NULL") == 0
    finally:
        await conn.close()
