"""API keys, the gateway's store: create, list, revoke, check; and their publication to the gRPC services.

Keys are the gateway's (its `api_keys` table, keyed by user). A key is accepted wherever a session
token is (`Authorization: Bearer dk_…`) on REST, and by the ingest and chat services over gRPC, which
read the keys the gateway publishes to Redis (services.runtime.api_keys): at creation, at start and
every REPUBLISH_SECONDS, and withdrawn at revocation. Managing keys takes a session: a key cannot
create, list or revoke keys (services/gateway/routes_api_keys.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.gateway.errors import ApiError, unauthorized
from services.runtime.api_keys import (
    PublishedKey,
    matches,
    new_key,
    parse_key,
    publish_keys,
    read_last_used,
    secret_hash,
)
from services.runtime.auth import KeyGrant
from services.runtime.errors import Unauthenticated

log = structlog.get_logger("docent.gateway.api_keys")
REPUBLISH_SECONDS = 30.0
MAX_ACTIVE_KEYS = 100
LAST_USED_EVERY = dt.timedelta(minutes=1)
_FAILURES = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_COLUMNS = ("id, user_id, name, secret_hash, access, chats_per_minute, uploads_per_minute, collection_ids, "
            "created_at, expires_at, revoked_at, last_used_at")


def grant_of(row: asyncpg.Record) -> KeyGrant:
    collections = row["collection_ids"]
    return KeyGrant(key_id=str(row["id"]), access=row["access"], chats_per_minute=row["chats_per_minute"],
                    uploads_per_minute=row["uploads_per_minute"],
                    collections=tuple(str(value) for value in collections) if collections is not None else None)


def _published(row: asyncpg.Record) -> PublishedKey:
    expires = row["expires_at"]
    return PublishedKey(key_id=str(row["id"]), user_id=str(row["user_id"]), secret_hash=row["secret_hash"],
                        grant=grant_of(row), expires_at=expires.timestamp() if expires else None)


class ApiKeys:
    """The table, and its publication to Redis. `pool` returns the accounts pool (or raises the 503)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], redis: aioredis.Redis | None) -> None:
        self._pool = pool
        self._redis = redis

    async def authenticate(self, key: str) -> tuple[str, KeyGrant]:
        """The user and grant of a usable key; raises Unauthenticated otherwise."""
        try:
            key_id = parse_key(key)
        except Unauthenticated:
            raise unauthorized("Invalid API key", "API_KEY_INVALID") from None
        pool = self._pool()
        row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None or row["revoked_at"] is not None or not matches(key, row["secret_hash"]):
            raise unauthorized("Invalid or revoked API key", "API_KEY_INVALID")
        if row["expires_at"] is not None and row["expires_at"] <= dt.datetime.now(dt.UTC):
            raise unauthorized("API key expired", "API_KEY_EXPIRED")
        # one write a minute per key at most, decided from the row just read (no round trip otherwise)
        last_used = row["last_used_at"]
        if last_used is None or dt.datetime.now(dt.UTC) - last_used > LAST_USED_EVERY:
            await pool.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)
        return str(row["user_id"]), grant_of(row)

    async def create(self, user_id: str, name: str, access: str, expires_at: dt.datetime | None,
                     chats_per_minute: int | None, uploads_per_minute: int | None,
                     collection_ids: list[uuid.UUID] | None = None) -> tuple[asyncpg.Record, str]:
        key_id, key = new_key()
        async with self._pool().acquire() as conn, conn.transaction():
            # serialise one user's creations so the cap holds under concurrent requests
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('api_keys:' || $1))", user_id)
            active = await conn.fetchval(
                """SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > now())""", uuid.UUID(user_id))
            if active >= MAX_ACTIVE_KEYS:
                raise ApiError(409, f"at most {MAX_ACTIVE_KEYS} active API keys per user: revoke one first",
                               "API_KEY_LIMIT")
            row = await conn.fetchrow(
                f"""INSERT INTO api_keys (id, user_id, name, secret_hash, access, chats_per_minute,
                                          uploads_per_minute, expires_at, collection_ids)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}""",
                key_id, uuid.UUID(user_id), name, secret_hash(key), access, chats_per_minute, uploads_per_minute,
                expires_at, collection_ids)
        await self._publish([_published(row)], [])
        log.info("api_key_created", api_key_id=str(key_id), access=access)
        return row, key

    async def list(self, user_id: str) -> list[tuple[asyncpg.Record, dt.datetime | None]]:
        """The user's keys that are not revoked, newest first, each with when it was last used."""
        rows = await self._pool().fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC",
            uuid.UUID(user_id))
        used: dict[str, float] = {}
        if self._redis is not None and rows:
            try:
                used = await read_last_used(self._redis, [str(row["id"]) for row in rows])
            except (RedisError, OSError) as error:
                log.warning("api_key_use_unreadable", error=type(error).__name__)
        result = []
        for row in rows:
            last = row["last_used_at"]
            seen = used.get(str(row["id"]))
            if seen is not None:
                seen_at = dt.datetime.fromtimestamp(seen, dt.UTC)
                last = max(last, seen_at) if last else seen_at
            result.append((row, last))
        return result

    async def revoke(self, user_id: str, key_id: uuid.UUID) -> bool:
        revoked = await self._pool().fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL "
            "RETURNING id", key_id, uuid.UUID(user_id))
        if revoked is None:
            return False
        await self._publish([], [str(key_id)])
        log.info("api_key_revoked", api_key_id=str(key_id))
        return True

    async def _publish(self, keys: list[PublishedKey], revoked: list[str]) -> None:
        if self._redis is None:
            return
        try:
            await publish_keys(self._redis, keys, revoked)
        except (RedisError, OSError) as error:
            # the table is right and the gateway checks it; the next republish tells the services
            log.warning("api_key_publish_failed", error=type(error).__name__, retry_in_seconds=REPUBLISH_SECONDS)

    async def republish(self) -> int:
        """Publish every usable key again and withdraw every revoked one; returns how many are usable."""
        if self._redis is None:
            return 0
        rows = await self._pool().fetch(f"SELECT {_COLUMNS} FROM api_keys")
        usable = [_published(row) for row in rows if row["revoked_at"] is None]
        await publish_keys(self._redis, usable, [str(row["id"]) for row in rows if row["revoked_at"] is not None])
        return len(usable)

    async def republish_forever(self, interval: float = REPUBLISH_SECONDS) -> None:
        while True:
            try:
                count = await self.republish()
            except _FAILURES as error:
                log.warning("api_key_republish_failed", error=type(error).__name__, retry_in_seconds=interval)
            else:
                log.debug("api_keys_republished", count=count)
            await asyncio.sleep(interval)
