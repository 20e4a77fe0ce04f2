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
from collections import OrderedDict, deque

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("docent.gateway")
KEY_PREFIX = "docent:signin:"
SIGNIN_MAX_FAILURES = 5
SIGNIN_WINDOW_SECONDS = 60.0


class SigninLimiter:
    """Per-account sliding window of failed sign-ins (in this gateway process)."""

    def __init__(self, max_failures: int = SIGNIN_MAX_FAILURES, window: float = SIGNIN_WINDOW_SECONDS,
                 max_accounts: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_accounts = max_accounts
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Seconds until `key` may try again; 0 when it is not blocked."""
        now = time.monotonic() if now is None else now
        failures = self._recent(key, now)
        if len(failures) < self.max_failures:
            return 0
        return max(1, int(failures[-self.max_failures] + self.window - now + 0.999))

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures = self._recent(key, now)
        if not failures:
            self._failures[key] = failures
        failures.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_accounts:
            self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


class SigninLimits:
    """The limit across replicas: `redis` is the gateway's Redis client (None: this process only)."""

    def __init__(self, redis: aioredis.Redis | None, max_failures: int = SIGNIN_MAX_FAILURES,
                 window: float = SIGNIN_WINDOW_SECONDS) -> None:
        self.max_failures = max_failures
        self.window = window
        self.local = SigninLimiter(max_failures, window)
        self.redis = redis

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
