"""The failed sign-in limit, shared by every gateway replica through Redis when there is one.

Per account (the lower-cased email): at most SIGNIN_MAX_FAILURES failures within the window, then 429
until the oldest of them leaves it. With one counter per replica, N replicas would allow N times as
many guesses. The window is a sorted set of failure times per account (key: a hash of the email, so
no address is stored in Redis); without Redis (a gateway on its own), or while Redis does not answer,
the per-process limiter stands in.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.gateway.accounts import SIGNIN_MAX_FAILURES, SIGNIN_WINDOW_SECONDS, SigninLimiter

log = structlog.get_logger("docent.gateway")
KEY_PREFIX = "docent:signin:"


class SigninLimits:
    def __init__(self, redis_url: str | None, max_failures: int = SIGNIN_MAX_FAILURES,
                 window: float = SIGNIN_WINDOW_SECONDS) -> None:
        self.max_failures = max_failures
        self.window = window
        self.local = SigninLimiter(max_failures, window)
        self.redis = aioredis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1) if redis_url else None

    def _key(self, account: str) -> str:
        return KEY_PREFIX + hashlib.sha256(account.encode()).hexdigest()[:32]

    async def retry_after(self, account: str) -> int:
        """Seconds until `account` may try again; 0 when it is not blocked."""
        if self.redis is not None:
            now = time.time()
            key = self._key(account)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zremrangebyscore(key, 0, now - self.window)
                    pipe.zrevrange(key, 0, self.max_failures - 1, withscores=True)
                    _, recent = await pipe.execute()
            except (RedisError, OSError) as error:
                log.warning("signin_limit_redis_unavailable", error=type(error).__name__)
            else:
                if len(recent) < self.max_failures:
                    return 0
                return max(1, int(recent[-1][1] + self.window - now + 0.999))
        return self.local.retry_after(account)

    async def failed(self, account: str) -> None:
        self.local.failed(account)
        if self.redis is None:
            return
        now = time.time()
        key = self._key(account)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {uuid.uuid4().hex: now})
                pipe.expire(key, int(self.window) + 1)
                await pipe.execute()
        except (RedisError, OSError) as error:
            log.warning("signin_limit_redis_unavailable", error=type(error).__name__)

    async def succeeded(self, account: str) -> None:
        self.local.succeeded(account)
        if self.redis is None:
            return
        try:
            await self.redis.delete(self._key(account))
        except (RedisError, OSError) as error:
            log.warning("signin_limit_redis_unavailable", error=type(error).__name__)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
