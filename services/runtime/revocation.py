"""Logged-out tokens, as the gateway publishes them and the gRPC services read them, through Redis.

The gateway owns revocation: it records each logout in its `revoked_tokens` table (its durable
record) and publishes it here as the key `docent:revoked:<jti>`, which expires when the token does.
The gRPC services ask Redis, never the gateway's table. The gateway publishes its unexpired
revocations again when it starts (and every 30 s), so a Redis flush or restart does not bring
a logged-out token back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("docent.revocation")

KEY_PREFIX = "docent:revoked:"


def revocation_key(token_id: str) -> str:
    return KEY_PREFIX + token_id


async def publish_revocations(redis: aioredis.Redis, revocations: Iterable[tuple[str, float]]) -> int:
    """Publish (token id, expiry as unix seconds) pairs; each key lives until its token expires.

    Tokens that have already expired are refused as expired anyway and are skipped. Returns how
    many keys were written; Redis errors propagate.
    """
    now = time.time()
    written = 0
    async with redis.pipeline(transaction=False) as pipe:
        for token_id, expires_at in revocations:
            if token_id and expires_at > now:
                pipe.set(revocation_key(token_id), b"1", ex=max(1, math.ceil(expires_at - now)))
                written += 1
        if written:
            await pipe.execute()
    return written


class RevocationList:
    """Answers "was this token id revoked?" for the gRPC services, from the gateway's Redis keys.

    It keeps the set of revoked token ids in memory and reads it again from Redis (one SCAN of the
    prefix) at most every `refresh_seconds`, on the request that finds it due: a logged-out token stops
    working over gRPC within that time, and no request waits on Redis in between.

    When Redis does not answer, the last set read stays in force and the call goes on: revocations
    published before the outage are still honoured, a logout during it reaches the gRPC services when
    Redis is back (the gateway publishes again), and a Redis outage does not stop uploads and chats
    (the queue is not needed to accept them, see docs/RELIABILITY.md). The gateway checks its own
    table for REST callers, so only a direct gRPC caller holding a token revoked during an outage is
    let through until Redis answers again.
    """

    def __init__(self, redis_url: str, refresh_seconds: float = 5.0) -> None:
        self._redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._refresh_seconds = refresh_seconds
        self._revoked: frozenset[str] = frozenset()
        self._due = 0.0  # monotonic time of the next read from Redis
        self._refreshing = asyncio.Lock()
        self.last_error: str = ""

    async def is_revoked(self, token_id: str) -> bool:
        if not token_id:
            return False
        if time.monotonic() >= self._due and not self._refreshing.locked():
            await self._refresh()
        return token_id in self._revoked

    async def _refresh(self) -> None:
        async with self._refreshing:
            try:
                found = {key.decode()[len(KEY_PREFIX):]
                         async for key in self._redis.scan_iter(match=KEY_PREFIX + "*", count=1000)}
            except (RedisError, OSError) as error:
                if not self.last_error:
                    log.warning("revocations_unreadable", error=type(error).__name__,
                                known=len(self._revoked))
                self.last_error = type(error).__name__
            else:
                if self.last_error:
                    log.info("revocations_readable", known=len(found))
                self._revoked, self.last_error = frozenset(found), ""
            self._due = time.monotonic() + self._refresh_seconds

    async def close(self) -> None:
        await self._redis.aclose()
