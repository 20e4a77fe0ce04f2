"""API keys and quotas through the real gateway and the real gRPC services (retrieval with the ONNX
embedder, ingest, chat), embedded Postgres and Redis: keys work as bearer credentials on REST and gRPC,
read keys cannot write, revocation and expiry hold on both, and the per-minute quotas hold across two
gateway processes and two ingest replicas."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from docent.v1 import chat_pb2, chat_pb2_grpc, ingest_pb2, ingest_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.chat.app import chat_service
from services.ingest.app import ingest_service
from services.retrieval.app import retrieval_service
from services.runtime.api_keys import CACHE_SECONDS, ApiKeyDirectory, PublishedKey, publish_keys, secret_hash
from services.runtime.auth import KeyGrant
from services.runtime.errors import error_info
from services.runtime.quotas import Limit, LocalLimiter
from tests.conftest import create_database, make_settings, running_service
from tests.test_gateway_auth import bearer, serve_gateway, signup

TEXT = b"The lighthouse keeper logs the fog horn hours in the blue ledger every night.\n"


@contextlib.asynccontextmanager
async def services(backing, embedder, database_url: str, ingest_replicas: int = 1,
                   **quotas: int) -> AsyncIterator[tuple[list[str], str, str]]:
    """Retrieval, `ingest_replicas` ingest services and a chat service; yields (ingest targets, chat, retrieval)."""
    retrieval_settings = make_settings()
    async with running_service(retrieval_service(retrieval_settings, embedder=embedder), retrieval_settings) as r, \
            contextlib.AsyncExitStack() as stack:
        settings = make_settings(backing, database_url=database_url, retrieval_target=r, **quotas)
        ingest = [await stack.enter_async_context(running_service(ingest_service(settings), settings))
                  for _ in range(ingest_replicas)]
        chat = await stack.enter_async_context(running_service(chat_service(settings), settings))
        yield ingest, chat, r


def gateway_settings(backing, database_url: str, ingest: str, chat: str, **quotas: int):
    return make_settings(backing, database_url=database_url, ingest_target=ingest, chat_target=chat, **quotas)


@pytest.fixture(scope="module")
async def database_url(backing) -> str:
    return await create_database(backing.database_url)


@pytest.fixture(scope="module")
async def stack(backing, embedder, database_url):
    async with services(backing, embedder, database_url) as (ingest, chat, retrieval), \
            serve_gateway(gateway_settings(backing, database_url, ingest[0], chat)) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client, ingest[0], chat, retrieval


async def create_key(client: httpx.AsyncClient, session: str, **body: object) -> dict:
    reply = await client.post("/api/keys/", json={"name": "script", **body}, headers=bearer(session))
    assert reply.status_code == 201, reply.text
    return reply.json()


async def upload(client: httpx.AsyncClient, credential: str, name: str = "notes.txt",
                 content: bytes = TEXT) -> httpx.Response:
    return await client.post("/api/upload/", files={"file": (name, content, "text/plain")}, headers=bearer(credential))


def metadata(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


def reason(error: grpc.RpcError) -> str:
    info = error_info(error)
    return info.reason if info else ""


def retry_delay(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return retry.retry_delay.ToMilliseconds() / 1000
    raise AssertionError("no RetryInfo")


async def test_keys_over_rest_create_list_use_and_revoke(stack) -> None:
    client, *_ = stack
    account = await signup(client)
    session = account["access_token"]
    read = await create_key(client, session, access="read", expires_in_days=30)
    write = await create_key(client, session, name="uploader", access="write", chats_per_minute=5)
    assert read["key"].startswith(read["prefix"]) and read["access"] == "read" and read["expires_at"]
    assert write["chats_per_minute"] == 5 and write["expires_at"] is None

    listed = (await client.get("/api/keys/", headers=bearer(session))).json()["keys"]
    assert [key["id"] for key in listed] == [write["id"], read["id"]]  # newest first
    assert all("key" not in key for key in listed)  # shown once, at creation

    me = await client.get("/api/auth/me", headers=bearer(read["key"]))
    assert me.status_code == 200 and me.json()["id"] == account["user"]["id"]
    denied = await upload(client, read["key"])
    assert denied.status_code == 403 and denied.json()["reason"] == "API_KEY_READ_ONLY"
    accepted = await upload(client, write["key"])
    assert accepted.status_code == 202, accepted.text
    documents = await client.get("/api/upload/", headers=bearer(read["key"]))
    assert [doc["id"] for doc in documents.json()] == [accepted.json()["id"]]

    # a key cannot manage keys nor log out
    for call in (client.post("/api/keys/", json={"name": "x"}, headers=bearer(write["key"])),
                 client.get("/api/keys/", headers=bearer(write["key"])),
                 client.post("/api/auth/logout", headers=bearer(write["key"]))):
        reply = await call
        assert reply.status_code == 403 and reply.json()["reason"] == "SESSION_REQUIRED", reply.text

    other = (await signup(client))["access_token"]
    assert (await client.delete(f"/api/keys/{read['id']}", headers=bearer(other))).status_code == 404
    assert (await client.delete(f"/api/keys/{read['id']}", headers=bearer(session))).status_code == 204
    assert (await client.delete(f"/api/keys/{read['id']}", headers=bearer(session))).status_code == 404
    gone = await client.get("/api/upload/", headers=bearer(read["key"]))
    assert gone.status_code == 401 and gone.json()["reason"] == "API_KEY_INVALID"
    assert [key["id"] for key in (await client.get("/api/keys/", headers=bearer(session))).json()["keys"]] \
        == [write["id"]]

    for forged in (read["key"][:-4] + "AAAA", "dk_nonsense", write["key"].replace(write["id"].replace("-", ""),
                                                                                   uuid.uuid4().hex)):
        reply = await client.get("/api/upload/", headers=bearer(forged))
        assert reply.status_code == 401 and reply.json()["reason"] == "API_KEY_INVALID", forged


async def test_expired_key_is_refused(stack, database_url) -> None:
    client, *_ = stack
    session = (await signup(client))["access_token"]
    key = await create_key(client, session, expires_in_days=1)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
                           uuid.UUID(key["id"]))
    finally:
        await conn.close()
    reply = await client.get("/api/upload/", headers=bearer(key["key"]))
    assert reply.status_code == 401 and reply.json()["reason"] == "API_KEY_EXPIRED"


async def test_keys_over_grpc(stack) -> None:
    client, ingest_target, chat_target, retrieval_target = stack
    session = (await signup(client))["access_token"]
    read = await create_key(client, session, access="read")
    write = await create_key(client, session, access="write")
    document = (await upload(client, session)).json()

    async with grpc.aio.insecure_channel(ingest_target) as ingest_channel, \
            grpc.aio.insecure_channel(chat_target) as chat_channel, \
            grpc.aio.insecure_channel(retrieval_target) as retrieval_channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        chat = chat_pb2_grpc.ChatServiceStub(chat_channel)
        listed = await ingest.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=metadata(read["key"]))
        assert [doc.id for doc in listed.documents] == [document["id"]]
        # chat reaches retrieval on the key holder's behalf (a forwarded token carries the grant)
        reply = await chat.Chat(chat_pb2.ChatRequest(query="what does the keeper log?"), metadata=metadata(read["key"]))
        assert reply.turn.conversation_id

        with pytest.raises(grpc.aio.AioRpcError) as read_only:
            await ingest.DeleteDocument(ingest_pb2.DeleteDocumentRequest(document_id=document["id"]),
                                        metadata=metadata(read["key"]))
        assert read_only.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(read_only.value) == "API_KEY_READ_ONLY"
        with pytest.raises(grpc.aio.AioRpcError) as internal:  # retrieval is internal: keys go to ingest/chat
            await retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel).Search(
                retrieval_pb2.SearchRequest(query="fog"), metadata=metadata(read["key"]))
        assert internal.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(internal.value) == "API_KEY_NOT_ACCEPTED"

        # the services recorded the keys' use; the list shows it
        keys = {key["id"]: key for key in (await client.get("/api/keys/", headers=bearer(session))).json()["keys"]}
        assert keys[read["id"]]["last_used_at"] is not None and keys[write["id"]]["last_used_at"] is None

        assert (await client.delete(f"/api/keys/{read['id']}", headers=bearer(session))).status_code == 204
        await asyncio.sleep(CACHE_SECONDS + 0.3)  # what the service read about the key expires
        with pytest.raises(grpc.aio.AioRpcError) as revoked:
            await ingest.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=metadata(read["key"]))
        assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(revoked.value) == "API_KEY_INVALID"
        # the write key still works, and may delete
        await ingest.DeleteDocument(ingest_pb2.DeleteDocumentRequest(document_id=document["id"]),
                                    metadata=metadata(write["key"]))


async def test_directory_refuses_expired_and_wrong_secrets(backing) -> None:
    import redis.asyncio as aioredis

    key_id = uuid.uuid4()
    key = f"dk_{key_id.hex}_{'s' * 43}"
    redis = aioredis.from_url(backing.redis_url)
    directory = ApiKeyDirectory(backing.redis_url, cache_seconds=0)
    try:
        await publish_keys(redis, [PublishedKey(str(key_id), "user-1", secret_hash(key), KeyGrant(str(key_id)),
                                                time.time() + 1.0)], [])
        identity = await directory.identify(key)
        assert identity.user_id == "user-1" and identity.key and identity.key.access == "read"
        with pytest.raises(Exception, match="invalid or revoked"):
            await directory.identify(key[:-1] + "t")
        await asyncio.sleep(1.2)
        with pytest.raises(Exception, match=r"expired|invalid"):
            await directory.identify(key)
    finally:
        await directory.close()
        await redis.aclose()


async def test_upload_rate_holds_across_two_gateways_and_two_ingest_replicas(backing, embedder) -> None:
    database_url = await create_database(backing.database_url)
    async with services(backing, embedder, database_url, ingest_replicas=2, quota_uploads_per_minute=2) \
            as (ingest, chat, _), \
            serve_gateway(gateway_settings(backing, database_url, ingest[0], chat)) as first, \
            serve_gateway(gateway_settings(backing, database_url, ingest[1], chat)) as second, \
            httpx.AsyncClient(timeout=30) as client:
        session = (await signup(client.__class__(base_url=first, timeout=30)))["access_token"]
        replies = []
        for index, base in enumerate((first, second, first, second)):
            file = (f"n{index}.txt", TEXT + bytes([65 + index]), "text/plain")
            replies.append(await client.post(f"{base}/api/upload/", headers=bearer(session), files={"file": file}))
        assert [reply.status_code for reply in replies] == [202, 202, 429, 429]
        refused = replies[2]
        assert refused.json()["reason"] == "UPLOAD_RATE_LIMITED"
        assert 1 <= int(refused.headers["Retry-After"]) <= 30  # 2 per minute: the next slot within 30 s

        async with grpc.aio.insecure_channel(ingest[1]) as channel:
            async def messages():
                yield ingest_pb2.UploadDocumentRequest(metadata=ingest_pb2.UploadMetadata(filename="g.txt"))
                yield ingest_pb2.UploadDocumentRequest(chunk=TEXT)

            with pytest.raises(grpc.aio.AioRpcError) as exhausted:
                await ingest_pb2_grpc.IngestServiceStub(channel).UploadDocument(messages(), metadata=metadata(session))
        assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 0 < retry_delay(exhausted.value) <= 30


async def test_document_quota_and_usage(backing, embedder) -> None:
    database_url = await create_database(backing.database_url)
    async with services(backing, embedder, database_url, quota_documents=1, quota_stored_bytes=10_000) \
            as (ingest, chat, _), \
            serve_gateway(gateway_settings(backing, database_url, ingest[0], chat, quota_chats_per_minute=7)) \
            as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        session = (await signup(client))["access_token"]
        too_big = await upload(client, session, content=b"x" * 10_001)
        assert too_big.status_code == 429 and too_big.json()["reason"] == "STORAGE_QUOTA_EXCEEDED"
        assert "Retry-After" not in too_big.headers  # deleting documents frees it, not waiting
        assert (await upload(client, session)).status_code == 202
        second = await upload(client, session, name="more.txt", content=TEXT + b"more")
        assert second.status_code == 429 and second.json()["reason"] == "DOCUMENT_QUOTA_EXCEEDED"

        usage = (await client.get("/api/usage", headers=bearer(session))).json()
        assert usage == {"documents": 1, "stored_bytes": len(TEXT), "documents_limit": 1, "stored_bytes_limit": 10_000,
                         "chats_per_minute": 7, "uploads_per_minute": None}
        key = await create_key(client, session, chats_per_minute=3)
        by_key = (await client.get("/api/usage", headers=bearer(key["key"]))).json()
        assert by_key["chats_per_minute"] == 3


async def test_a_key_is_held_to_its_own_chat_limit(stack) -> None:
    client, _, chat_target, _ = stack
    session = (await signup(client))["access_token"]
    key = await create_key(client, session, chats_per_minute=1)
    async with grpc.aio.insecure_channel(chat_target) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        await chat.Chat(chat_pb2.ChatRequest(query="first"), metadata=metadata(key["key"]))
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await chat.Chat(chat_pb2.ChatRequest(query="second"), metadata=metadata(key["key"]))
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(limited.value) == "CHAT_RATE_LIMITED" and 30 < retry_delay(limited.value) <= 60
        # the key's limit is the key's: its user's session is not held to it
        await chat.Chat(chat_pb2.ChatRequest(query="third"), metadata=metadata(session))
    over_rest = await client.post("/api/chat/", json={"query": "again"}, headers=bearer(key["key"]))
    assert over_rest.status_code == 429 and int(over_rest.headers["Retry-After"]) >= 30


def test_gcra_allows_a_burst_then_one_per_interval() -> None:
    limiter = LocalLimiter()
    limits = [Limit("u", 3)]  # 3 per minute: one every 20 s
    assert [limiter.acquire(limits, now_ms=0) for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire(limits, now_ms=0) == pytest.approx(20_000)
    assert limiter.acquire(limits, now_ms=19_999) > 0
    assert limiter.acquire(limits, now_ms=20_000) == 0
    # two limits: refused by the tighter one, and the looser one is not charged for the refusal
    both = [Limit("a", 1), Limit("b", 100)]
    assert limiter.acquire(both, now_ms=0) == 0
    assert limiter.acquire(both, now_ms=0) > 0
    assert [limiter.acquire([Limit("b", 100)], now_ms=0) for _ in range(99)] == [0] * 99


async def test_cli_acts_as_an_account_by_email_or_api_key(stack, database_url, monkeypatch, capsys) -> None:
    import jwt

    from services import cli
    from tests.conftest import TEST_SECRET

    client, ingest_target, *_ = stack
    account = await signup(client)
    session = account["access_token"]
    assert (await upload(client, session, name="ledger.txt")).status_code == 202
    key = await create_key(client, session, access="read")
    monkeypatch.setenv("DOCENT_DATABASE_URL", database_url)
    monkeypatch.setenv("DOCENT_JWT_SECRET", TEST_SECRET)
    monkeypatch.setenv("DOCENT_INGEST_TARGET", ingest_target)
    capsys.readouterr()

    assert await asyncio.to_thread(cli.main, ["token", "--email", account["user"]["email"].upper()]) == 0
    minted = capsys.readouterr().out.strip()
    assert jwt.decode(minted, TEST_SECRET, algorithms=["HS256"], issuer="docent")["sub"] == account["user"]["id"]
    with pytest.raises(SystemExit, match="no account"):
        await asyncio.to_thread(cli.main, ["token", "--email", "nobody@example.com"])

    for argv in (["docs", "--api-key", key["key"]], ["docs", "--email", account["user"]["email"]]):
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert "ledger.txt" in capsys.readouterr().out, argv
