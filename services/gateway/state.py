"""What the gateway holds open (channels, stubs, the accounts pool, Redis), built whole at start-up."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg
import grpc
import redis.asyncio as aioredis
import structlog
from fastapi import Request

from docent.v1 import chat_pb2_grpc, ingest_pb2_grpc
from services.gateway.api_key_store import ApiKeys
from services.gateway.errors import ApiError
from services.gateway.request_context import request_id
from services.gateway.revocations import TokenRevocations
from services.gateway.signin_limit import SigninLimits
from services.runtime import db
from services.runtime.auth import KeyGrant
from services.runtime.config import Settings
from services.runtime.grpc_client import call_options, create_channel

log = structlog.get_logger("docent.gateway")
# WatchDocument streams until a terminal state; a browser tab may watch a long document
WATCH_TIMEOUT_SECONDS = 3600.0
# what the gateway itself calls: its readiness depends on these only (retrieval being down is chat's concern)
CALLED = ("ingest", "chat")


@dataclass(frozen=True)
class Caller:
    """The authenticated user of a REST request; `token` is forwarded to the gRPC services (for an API
    key, a short-lived token carrying the key's grant); `key` is set when the caller used an API key."""

    user_id: str
    token: str
    token_id: str
    key: KeyGrant | None = None


@dataclass
class GatewayState:
    settings: Settings
    secret: str
    channels: dict[str, grpc.aio.Channel]
    ingest: ingest_pb2_grpc.IngestServiceStub
    chat: chat_pb2_grpc.ChatServiceStub
    # None when DOCENT_DATABASE_URL / DOCENT_REDIS_URL are unset: accounts answer 503, limits are per process
    pool: asyncpg.Pool | None
    redis: aioredis.Redis | None
    signin_limits: SigninLimits = field(init=False)
    revocations: TokenRevocations = field(init=False)
    api_keys: ApiKeys = field(init=False)
    _background: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.signin_limits = SigninLimits(self.redis)
        self.revocations = TokenRevocations(self.db, self.redis)
        self.api_keys = ApiKeys(self.db, self.redis)

    @classmethod
    async def open(cls, settings: Settings, secret: str) -> GatewayState:
        """Channels, stubs, pool and Redis client; call on the serving event loop (grpc.aio channels are
        bound to the loop they are created on). Publishes the revocations and API keys again, now and
        periodically."""
        channels = {name: create_channel(settings.target(name)) for name in CALLED}  # type: ignore[arg-type]
        pool = None
        if settings.database_url:
            pool = await db.open_migrated_pool(settings.database_url, ["gateway"],
                                               max_size=min(settings.db_pool_max, 10))
        else:
            log.warning("accounts_disabled", why="DOCENT_DATABASE_URL is unset")
        redis = (aioredis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
                 if settings.redis_url else None)
        state = cls(settings=settings, secret=secret, channels=channels,
                    ingest=ingest_pb2_grpc.IngestServiceStub(channels["ingest"]),
                    chat=chat_pb2_grpc.ChatServiceStub(channels["chat"]), pool=pool, redis=redis)
        if pool is not None and redis is not None:
            await state.revocations.republish_logged()
            state._background.append(asyncio.create_task(state.revocations.republish_forever()))
            # publishes at once, then every 30 s
            state._background.append(asyncio.create_task(state.api_keys.republish_forever()))
        return state

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))
        if self.redis is not None:
            await self.redis.aclose()
        if self.pool is not None:
            await self.pool.close()

    def options(self, caller: Caller, timeout: float | None = None) -> dict[str, object]:
        """Deadline, the caller's bearer token and the request id for one gRPC call."""
        return call_options(caller.token, timeout or self.settings.grpc_deadline_seconds, request_id() or None)

    @property
    def chat_timeout(self) -> float:
        # an LLM answer may take the LLM's own timeout on top of retrieval and storage
        return self.settings.grpc_deadline_seconds + self.settings.llm_timeout_seconds

    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise ApiError(503, "accounts database is not available", "DATABASE_UNAVAILABLE")
        return self.pool


def get_state(request: Request) -> GatewayState:
    return request.app.state.docent
