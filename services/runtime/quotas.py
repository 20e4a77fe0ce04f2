"""Request-rate quotas (chats and uploads per minute), per user and per API key, across replicas.

The limiter is GCRA (the "generic cell rate algorithm"): one number per limited key, the time at
which its next request would be on schedule. `n` per minute allows a burst of `n` and then one every
60/n s. Every replica of a service shares the state through Redis: one script call per request
checks the user's and the key's limits together and charges both only if both allow it. Written here
rather than taken from a rate-limit library because it is one short script on the Redis client the
services already hold (the libraries we looked at bring their own Redis client).

While Redis does not answer (or without Redis), each process limits on its own: a replica never
refuses every request because the shared store is down, and never lets everything through either.
The stored-bytes and document-count quotas are the ingest service's (it owns the documents).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.runtime.auth import Identity
from services.runtime.errors import ResourceExhausted

log = structlog.get_logger("docent.quotas")
KEY_PREFIX = "docent:rate:"
WINDOW_MS = 60_000

# KEYS: the limited keys; ARGV: each key's emission interval in ms. Returns 0 when the request is
# admitted (every key charged), else the milliseconds until all of them would admit it.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tats[i] = tat + interval
  local allowed_at = tats[i] - WINDOW_MS
  if allowed_at - now > wait then wait = allowed_at - now end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tats[i], 'PX', math.ceil(tats[i] - now))
end
return 0
""".replace("WINDOW_MS", str(WINDOW_MS))


@dataclass(frozen=True)
class Limit:
    key: str
    per_minute: int

    @property
    def interval_ms(self) -> float:
        return WINDOW_MS / self.per_minute


class LocalLimiter:
    """The same algorithm in this process's memory (no Redis, or Redis down)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tats: dict[str, float] = {}
        self._max_keys = max_keys

    def acquire(self, limits: list[Limit], now_ms: float | None = None) -> float:
        now = time.monotonic() * 1000 if now_ms is None else now_ms
        next_tats = [max(self._tats.get(limit.key, now), now) + limit.interval_ms for limit in limits]
        wait = max((tat - WINDOW_MS - now for tat in next_tats), default=0.0)
        if wait > 0:
            return wait
        if len(self._tats) > self._max_keys:
            self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        for limit, tat in zip(limits, next_tats, strict=True):
            self._tats[limit.key] = tat
        return 0.0


class RateLimiter:
    """Admits or refuses one request against a set of limits; shared through Redis when there is one."""

    def __init__(self, redis_url: str | None) -> None:
        self._redis = (aioredis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
                       if redis_url else None)
        self._script = self._redis.register_script(_GCRA) if self._redis is not None else None
        self.local = LocalLimiter()

    async def acquire(self, limits: list[Limit]) -> float:
        """0 when admitted, else the seconds to wait (nothing is charged then)."""
        if not limits:
            return 0.0
        if self._script is not None:
            try:
                wait_ms = await self._script(keys=[KEY_PREFIX + limit.key for limit in limits],
                                             args=[f"{limit.interval_ms:.3f}" for limit in limits])
            except (RedisError, OSError) as error:
                log.warning("rate_limit_redis_unavailable", error=type(error).__name__)
            else:
                return float(wait_ms) / 1000
        return self.local.acquire(limits) / 1000

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


class Quotas:
    """The per-minute quotas of the chat and upload methods for one caller.

    `chats_per_minute` / `uploads_per_minute` apply to every user (0: no limit); an API key created
    with its own limits is held to them as well.
    """

    def __init__(self, limiter: RateLimiter, *, chats_per_minute: int, uploads_per_minute: int) -> None:
        self._limiter = limiter
        self._chats = chats_per_minute
        self._uploads = uploads_per_minute

    async def admit_chat(self, identity: Identity) -> None:
        key_limit = identity.key.chats_per_minute if identity.key else None
        await self._admit("chat", "chats", identity, self._chats, key_limit)

    async def admit_upload(self, identity: Identity) -> None:
        key_limit = identity.key.uploads_per_minute if identity.key else None
        await self._admit("upload", "uploads", identity, self._uploads, key_limit)

    async def _admit(self, kind: str, noun: str, identity: Identity, user_limit: int,
                     key_limit: int | None) -> None:
        limits = []
        if user_limit > 0:
            limits.append(Limit(f"{kind}:user:{identity.user_id}", user_limit))
        if identity.key is not None and key_limit:
            limits.append(Limit(f"{kind}:key:{identity.key.key_id}", key_limit))
        wait = await self._limiter.acquire(limits)
        if wait > 0:
            whose = "this API key's" if identity.key is not None and key_limit and (
                not user_limit or key_limit <= user_limit) else "your"
            raise ResourceExhausted(
                f"{whose} limit of {noun} per minute is reached; try again in {math.ceil(wait)} s",
                reason=f"{kind.upper()}_RATE_LIMITED", retry_after=wait)
