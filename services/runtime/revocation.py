"""Logged-out tokens, as the gateway publishes them and the gRPC services read them, through Redis.

The gateway owns revocation: it records each logout in its `revoked_tokens` table (its durable
record) and publishes it here as the key `docent:revoked:<jti>`, which expires when the token does.
The gRPC services ask Redis, never the gateway's table. The gateway publishes its unexpired
revocations again when it starts (and every few minutes), so a Redis flush or restart does not bring
a logged-out token back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import redis.asyncio as aioredis

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

    Each answer is cached for `ttl_seconds` (at most `max_entries` of them), so a busy service asks
    Redis at most once per token per TTL: a logged-out token stops working over gRPC within that
    time. When Redis does not answer, `is_revoked` raises its connection error instead of guessing
    "not revoked"; services.runtime.errors.backing_outage maps that to UNAVAILABLE.
    """

    def __init__(self, redis_url: str, ttl_seconds: float = 5.0, max_entries: int = 10_000) -> None:
        self._redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._ttl = ttl_seconds
        self._max = max_entries
        self._answers: dict[str, tuple[bool, float]] = {}

    async def is_revoked(self, token_id: str) -> bool:
        if not token_id:
            return False
        now = time.monotonic()
        cached = self._answers.get(token_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        revoked = bool(await self._redis.exists(revocation_key(token_id)))
        if len(self._answers) >= self._max:
            self._answers = {key: value for key, value in self._answers.items() if value[1] > now}
            if len(self._answers) >= self._max:
                self._answers.clear()
        self._answers[token_id] = (revoked, now + self._ttl)
        return revoked

    async def close(self) -> None:
        await self._redis.aclose()
