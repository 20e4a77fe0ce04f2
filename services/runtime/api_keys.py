"""API keys: their format, and how the gRPC services learn of them from the gateway, through Redis.

A key reads `dk_<key id, 32 hex>_<secret>`. The gateway owns keys (its `api_keys` table keeps the
sha256 of the secret, never the secret, which is shown once at creation). The secret is 256 random
bits, so a fast hash is as safe as a slow one and keeps a key check to microseconds.

The gRPC services never read the gateway's table: the gateway publishes each usable key as
`docent:apikey:<key id>` (the hash, the user, the grant; expiring with the key) when it is created,
at gateway start and every 30 s, and deletes it when the key is revoked. A service looks a key up
there and keeps what it read for CACHE_SECONDS, so a revoked key stops working over gRPC within that
time; while Redis does not answer, keys already seen keep working (as with logged-out tokens,
services.runtime.revocation), and unknown keys are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.runtime.auth import Identity, KeyGrant
from services.runtime.errors import Unauthenticated

log = structlog.get_logger("docent.api_keys")

KEY_PREFIX = "dk_"
DIRECTORY_PREFIX = "docent:apikey:"
USED_PREFIX = "docent:apikey-used:"
CACHE_SECONDS = 5.0
# a service records a key's use in Redis at most this often (the gateway shows it as last used)
USED_RECORD_SECONDS = 60.0
# the token forwarded to other services on behalf of a key's holder is checked when each call starts;
# it only needs to outlive the start of the calls made for one request
FORWARDED_TOKEN_SECONDS = 300
_FORMAT = re.compile(r"dk_([0-9a-f]{32})_([A-Za-z0-9_-]{20,128})")


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def new_key() -> tuple[uuid.UUID, str]:
    """A new key's id and the full key to show its owner once."""
    key_id = uuid.uuid4()
    return key_id, f"{KEY_PREFIX}{key_id.hex}_{secrets.token_urlsafe(32)}"


def secret_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: str) -> uuid.UUID:
    """The key id of a well-formed key; a malformed one is refused like a wrong one."""
    match = _FORMAT.fullmatch(key)
    if match is None:
        raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
    return uuid.UUID(match.group(1))


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(key), stored_hash)


def display_prefix(key_id: uuid.UUID) -> str:
    """What lists show of a key, enough to tell keys apart, useless to an attacker."""
    return f"{KEY_PREFIX}{key_id.hex[:8]}"


@dataclass(frozen=True)
class PublishedKey:
    key_id: str
    user_id: str
    secret_hash: str
    grant: KeyGrant
    expires_at: float | None  # unix seconds

    def to_json(self) -> bytes:
        return json.dumps({"user": self.user_id, "hash": self.secret_hash, "grant": self.grant.claims(),
                           "expires_at": self.expires_at}).encode()

    @classmethod
    def from_json(cls, key_id: str, raw: bytes) -> PublishedKey:
        data = json.loads(raw)
        return cls(key_id=key_id, user_id=data["user"], secret_hash=data["hash"],
                   grant=KeyGrant.from_claims(data["grant"]), expires_at=data.get("expires_at"))


async def publish_keys(redis: aioredis.Redis, keys: list[PublishedKey], revoked: list[str]) -> None:
    """Publish usable keys and withdraw revoked ones, in one pipelined round trip."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            if key.expires_at is None:
                pipe.set(DIRECTORY_PREFIX + key.key_id, key.to_json())
            elif key.expires_at > now:
                pipe.set(DIRECTORY_PREFIX + key.key_id, key.to_json(), ex=max(1, math.ceil(key.expires_at - now)))
        for key_id in revoked:
            pipe.delete(DIRECTORY_PREFIX + key_id)
        await pipe.execute()


async def read_last_used(redis: aioredis.Redis, key_ids: list[str]) -> dict[str, float]:
    """When the gRPC services last saw each key (unix seconds), for the keys they recorded."""
    if not key_ids:
        return {}
    values = await redis.mget([USED_PREFIX + key_id for key_id in key_ids])
    return {key_id: float(value) for key_id, value in zip(key_ids, values, strict=True) if value}


class ApiKeyDirectory:
    """Verifies API keys for a gRPC service, from the gateway's Redis publication."""

    def __init__(self, redis_url: str, cache_seconds: float = CACHE_SECONDS) -> None:
        self._redis = aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._cache_seconds = cache_seconds
        # key id -> (entry or None when Redis said "no such key", monotonic time it was read)
        self._cache: dict[str, tuple[PublishedKey | None, float]] = {}
        self._used_recorded: dict[str, float] = {}

    async def identify(self, key: str) -> Identity:
        entry = await self._lookup(str(parse_key(key)))
        if entry is None or not matches(key, entry.secret_hash):
            raise Unauthenticated("invalid or revoked API key", reason="API_KEY_INVALID")
        if entry.expires_at is not None and entry.expires_at <= time.time():
            raise Unauthenticated("the API key has expired", reason="API_KEY_EXPIRED")
        await self._record_use(entry.key_id)
        return Identity(user_id=entry.user_id, token_id="", key=entry.grant)

    async def _lookup(self, key_id: str) -> PublishedKey | None:
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self._cache_seconds:
            return cached[0]
        try:
            raw = await self._redis.get(DIRECTORY_PREFIX + key_id)
        except (RedisError, OSError) as error:
            # keep honouring what was read before the outage; an unknown key cannot be checked
            log.warning("api_keys_unreadable", error=type(error).__name__)
            if cached is not None:
                return cached[0]
            raise Unauthenticated("API keys cannot be checked right now (Redis is unavailable); "
                                  "try again shortly", reason="API_KEY_UNVERIFIABLE") from None
        entry = PublishedKey.from_json(key_id, raw) if raw else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = (entry, now)
        return entry

    async def _record_use(self, key_id: str) -> None:
        now = time.time()
        if now - self._used_recorded.get(key_id, 0.0) < USED_RECORD_SECONDS:
            return
        self._used_recorded[key_id] = now
        try:
            await self._redis.set(USED_PREFIX + key_id, str(now), ex=90 * 24 * 3600)
        except (RedisError, OSError) as error:
            log.warning("api_key_use_unrecorded", error=type(error).__name__)

    async def close(self) -> None:
        await self._redis.aclose()
