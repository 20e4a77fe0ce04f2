"""Logout over REST reaches the gRPC services' reader through the gateway's Redis keys, survives a Redis
flush (the gateway publishes its table again when it starts), and ends when the token expires."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from services.runtime.auth import mint_token
from services.runtime.revocation import KEY_PREFIX, RevocationList, revocation_key
from tests.conftest import TEST_SECRET, create_database, free_port, make_settings
from tests.test_gateway_auth import bearer, serve_gateway, signup

CACHE_SECONDS = 0.1


@pytest.fixture(scope="module")
async def database_url(backing) -> str:
    return await create_database(backing.database_url)


@pytest.fixture
def settings(database_url, backing):
    dead = f"127.0.0.1:{free_port()}"  # the gateway's upstreams are not needed here
    return make_settings(database_url=database_url, redis_url=backing.redis_url, ingest_target=dead,
                         chat_target=dead)


@pytest.fixture
async def reader(backing):
    revocations = RevocationList(backing.redis_url, refresh_seconds=CACHE_SECONDS)
    yield revocations
    await revocations.close()


@pytest.fixture
async def redis_client(backing):
    client = aioredis.from_url(backing.redis_url)
    yield client
    await client.aclose()


def token_id(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["jti"]


async def logout(client: httpx.AsyncClient, token: str) -> None:
    reply = await client.post("/api/auth/logout", headers=bearer(token))
    assert reply.status_code == 200, reply.text


async def test_logout_over_rest_is_seen_by_the_reader(settings, reader, redis_client) -> None:
    async with serve_gateway(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        account = await signup(client)
        token, other = account["access_token"], mint_token(TEST_SECRET, account["user"]["id"], 600)
        assert not await reader.is_revoked(token_id(token))

        await logout(client, token)
        await asyncio.sleep(CACHE_SECONDS * 1.5)  # the cached "not revoked" answer expires
        assert await reader.is_revoked(token_id(token))
        assert not await reader.is_revoked(token_id(other))  # logout ends that token only
        # the key lives as long as the token, no longer
        remaining = await redis_client.ttl(revocation_key(token_id(token)))
        assert 0 < remaining <= settings.jwt_ttl_minutes * 60


async def test_gateway_start_publishes_the_revocations_again(settings, reader, redis_client) -> None:
    async with serve_gateway(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        token = (await signup(client))["access_token"]
        await logout(client, token)
    assert await redis_client.delete(revocation_key(token_id(token))) == 1  # as a Redis flush would
    assert not await reader.is_revoked(token_id(token))

    async with serve_gateway(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.sleep(CACHE_SECONDS * 1.5)
        assert await reader.is_revoked(token_id(token))
        assert (await client.get("/api/auth/me", headers=bearer(token))).status_code == 401


async def test_a_revocation_ends_when_its_token_expires(settings, reader, redis_client) -> None:
    async with serve_gateway(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        user_id = (await signup(client))["user"]["id"]
        short = mint_token(TEST_SECRET, user_id, 2)
        expires = jwt.decode(short, options={"verify_signature": False})["exp"]
        await logout(client, short)
        assert await reader.is_revoked(token_id(short))
        assert 0 < await redis_client.ttl(revocation_key(token_id(short))) <= 2

        await asyncio.sleep(max(0.0, expires - time.time()) + 1.1)
        assert not await redis_client.exists(revocation_key(token_id(short)))
        assert not await reader.is_revoked(token_id(short))
    # an expired revocation is not published again
    async with serve_gateway(settings):
        assert not await redis_client.exists(revocation_key(token_id(short)))


async def test_unreachable_redis_keeps_the_revocations_last_read(backing, redis_client) -> None:
    """A Redis outage neither stops the gRPC services nor brings back a token revoked before it."""
    port = free_port()
    revoked, other = uuid.uuid4().hex, uuid.uuid4().hex
    await redis_client.set(KEY_PREFIX + revoked, b"1", ex=60)
    revocations = RevocationList(backing.redis_url, refresh_seconds=CACHE_SECONDS)
    try:
        assert await revocations.is_revoked(revoked)
        # Redis goes away: the next refresh fails and the set read before stays in force
        await revocations._redis.aclose()
        revocations._redis = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
        await asyncio.sleep(CACHE_SECONDS * 1.5)
        assert await revocations.is_revoked(revoked)
        assert not await revocations.is_revoked(other)
        assert revocations.last_error == "ConnectionError"
    finally:
        await revocations.close()
        await redis_client.delete(KEY_PREFIX + revoked)


async def test_redis_is_read_at_most_once_per_refresh_interval(backing, redis_client) -> None:
    revocations = RevocationList(backing.redis_url, refresh_seconds=60)
    try:
        revoked = uuid.uuid4().hex
        assert not await revocations.is_revoked(revoked)
        await redis_client.set(KEY_PREFIX + revoked, b"1", ex=60)
        assert not await revocations.is_revoked(revoked)  # read again only after the interval
        revocations._due = 0.0
        assert await revocations.is_revoked(revoked)
        assert not await revocations.is_revoked("")
    finally:
        await revocations.close()
        await redis_client.delete(KEY_PREFIX + revoked)
