"""Logout: the gateway's `revoked_tokens` table, published to Redis for the gRPC services.

The table is the durable record and what the gateway itself checks; each revocation is also
published as a Redis key that expires with its token (services.runtime.revocation), which is all
the gRPC services read. Publishing happens at logout and again at start and every
REPUBLISH_SECONDS, so a Redis restart, flush, or an outage during a logout leaves a revoked token
accepted by the gRPC services for at most that long once Redis is back (while Redis is down they
keep the revocations they read last, services.runtime.revocation.RevocationList).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.runtime.revocation import publish_revocations

log = structlog.get_logger("docent.gateway")
# one SELECT and one pipelined write of the unexpired revocations: cheap enough to do often
REPUBLISH_SECONDS = 30.0
_FAILURES = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class TokenRevocations:
    """`pool` returns the accounts pool (or raises the gateway's 503); `redis` is None without Redis."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], redis: aioredis.Redis | None) -> None:
        self._pool = pool
        self._redis = redis

    async def is_revoked(self, token_id: str) -> bool:
        return bool(await self._pool().fetchval(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE token_id = $1)", token_id))

    async def revoke(self, token_id: str, expires_at: dt.datetime) -> None:
        pool = self._pool()
        await pool.execute(
            "INSERT INTO revoked_tokens (token_id, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            token_id, expires_at)
        # revocations of expired tokens are moot: keep the table small
        await pool.execute("DELETE FROM revoked_tokens WHERE expires_at < now() - interval '1 minute'")
        if self._redis is None:
            return
        try:
            await publish_revocations(self._redis, [(token_id, expires_at.timestamp())])
        except (RedisError, OSError) as error:
            # recorded above, so the gateway refuses the token now; the next republish tells the services
            log.warning("revocation_publish_failed", error=type(error).__name__, retry_in_seconds=REPUBLISH_SECONDS)

    async def republish(self) -> int:
        """Publish every unexpired revocation of the table again; returns how many."""
        if self._redis is None:
            return 0
        rows = await self._pool().fetch("SELECT token_id, expires_at FROM revoked_tokens WHERE expires_at > now()")
        return await publish_revocations(self._redis, [(row["token_id"], row["expires_at"].timestamp())
                                                       for row in rows])

    async def republish_logged(self) -> None:
        """Republish, logging a failure instead of raising (the next round tries again)."""
        try:
            count = await self.republish()
        except _FAILURES as error:
            log.warning("revocation_republish_failed", error=type(error).__name__, retry_in_seconds=REPUBLISH_SECONDS)
        else:
            log.info("revocations_republished", count=count)

    async def republish_forever(self, interval: float = REPUBLISH_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.republish_logged()
