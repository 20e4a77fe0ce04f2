"""Membership epochs: a per-user value in Redis that changes whenever the collections the user may read can change.

The ingest service owns collections and their members; the chat service resolves, at every turn, which
collections the caller may search (services/chat/collections.py). To reuse a resolution without ever using a
stale one, the chat service keeps it under the caller's epoch as read *before* resolving, and reuses it only
while Redis still holds that same epoch. The ingest service advances the epoch of every user a change touches
(a collection created or deleted, a member added, removed or given another role) *after* its transaction
commits. So a resolution is reused only if no change committed-and-advanced after its epoch was read, and the
turn after a change (whose RPC returns only once the epoch has advanced) resolves again.

An epoch is a random token, not a counter: a Redis that restarts empty, loses a key to its expiry or flushes
it, starts the user over with a new token rather than counting again from 1 — a counter would meet a value a
chat process has cached a resolution under before the loss, and reuse it although members changed since.
A user who has no epoch yet gets one from the first reader (created atomically, so two chat processes agree),
which also covers the users nobody has ever shared with. Epochs expire after EPOCH_SECONDS: an expired one
is only a resolution redone.

What stays open: a persisted Redis that crashes may come back without its last second of writes (AOF every
second) and so with a user's previous epoch; a chat process could then reuse a resolution older than a change
made in that second, until its cache's maximum age (the chat service keeps 60 s).

While Redis does not answer, a reader gets no epoch (None) and must resolve afresh; a change whose epoch cannot
be advanced is logged (ERROR), and chat processes may reuse what they resolved before it for at most that
maximum age.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("docent.membership")

KEY_PREFIX = "docent:membership:"
EPOCH_SECONDS = 24 * 3600
# after Redis failed to answer, readers go without epochs for this long rather than wait on it at every turn
RETRY_AFTER_SECONDS = 2.0

# KEYS[1]: the user's epoch key; ARGV: a new epoch, its lifetime in s. The current epoch, created if missing.
_CURRENT_OR_NEW = """
local epoch = redis.call('GET', KEYS[1])
if epoch then return epoch end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""


def epoch_key(user_id: str) -> str:
    return KEY_PREFIX + user_id


def new_epoch() -> str:
    return secrets.token_hex(16)


class MembershipEpochs:
    """Reads (chat) and advances (ingest) the users' membership epochs; without a Redis URL there are none."""

    def __init__(self, redis_url: str | None, *, retry_after_seconds: float = RETRY_AFTER_SECONDS) -> None:
        self._redis = (aioredis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
                       if redis_url else None)
        self._current = self._redis.register_script(_CURRENT_OR_NEW) if self._redis is not None else None
        self._retry_after = retry_after_seconds
        self._unreachable_until = 0.0

    async def current(self, user_id: str) -> str | None:
        """The user's epoch (one round trip), or None when it cannot be read: then nothing resolved for this
        user may be reused, nor kept."""
        if self._current is None or time.monotonic() < self._unreachable_until:
            return None
        try:
            epoch = await self._current(keys=[epoch_key(user_id)], args=[new_epoch(), EPOCH_SECONDS])
        except (RedisError, OSError) as error:
            self._unreachable_until = time.monotonic() + self._retry_after
            log.warning("membership_epoch_unreadable", error=type(error).__name__, retry_after_s=self._retry_after)
            return None
        return epoch.decode() if isinstance(epoch, bytes) else str(epoch)

    async def advance(self, user_ids: Iterable[str]) -> None:
        """Give each user a new epoch, once their change is committed. Never raises: the change is made; a
        cancelled caller (its client gone) still completes the write."""
        users = sorted(set(user_ids))
        if users and self._redis is not None:
            await asyncio.shield(self._write(users))

    async def _write(self, users: list[str]) -> None:
        assert self._redis is not None
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.set(epoch_key(user_id), new_epoch(), ex=EPOCH_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as error:
            # the change stands; chat processes may search as before it until their kept resolutions age out
            log.error("membership_epoch_not_advanced", error=type(error).__name__, users=len(users))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
