"""What a worker process holds open: the Postgres pool, the retrieval channel, the embedder.

Created lazily on the worker's event loop (Dramatiq's AsyncIO middleware runs one per process)
and shared by every actor in that process. The worker acts for many users: it mints a short
token for the user a document or turn belongs to, so the retrieval service scopes the write.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
from dramatiq.brokers.redis import RedisBroker

from docent.v1 import retrieval_pb2_grpc
from services.runtime import db
from services.runtime.auth import jwt_secret, mint_token
from services.runtime.config import Settings, load_settings
from services.runtime.embeddings import Embedder, create_embedder
from services.runtime.grpc_client import call_options, create_channel
from services.runtime.queue import create_broker

TOKEN_TTL_SECONDS = 600
# the actors write the documents (ingest) and the turns' memory (chat)
WORKER_COMPONENTS = ("ingest", "chat")


class WorkerResources:
    _instance: WorkerResources | None = None
    _lock: asyncio.Lock | None = None

    def __init__(self, settings: Settings, pool: asyncpg.Pool, channel: grpc.aio.Channel) -> None:
        self.settings = settings
        self.secret = jwt_secret(settings)
        self.pool = pool
        self.channel = channel
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        # loaded on first use: a worker that only delivers webhooks or forgets memory never needs it
        self._embedder: Embedder | None = None
        # a broker client to read queue depths (the actors' own broker is Dramatiq's global one)
        self._broker: RedisBroker | None = None
        self._tokens: dict[tuple[str, tuple[str, ...] | None], tuple[str, float]] = {}

    @classmethod
    async def open(cls, settings: Settings) -> WorkerResources:
        pool = await db.open_migrated_pool(settings.database_url or "", WORKER_COMPONENTS, max_size=4)
        return cls(settings, pool, create_channel(settings.target("retrieval")))

    @classmethod
    async def get(cls) -> WorkerResources:
        if cls._lock is None:
            cls._lock = asyncio.Lock()
        async with cls._lock:
            if cls._instance is None:
                cls._instance = await cls.open(load_settings())
            return cls._instance

    @classmethod
    async def configure(cls, settings: Settings) -> WorkerResources:
        """Open resources for `settings` and make them this process's shared instance (tests, tools)."""
        cls._instance = await cls.open(settings)
        return cls._instance

    @classmethod
    async def reset(cls) -> None:
        """Close and forget the shared instance."""
        instance, cls._instance = cls._instance, None
        if instance is not None:
            await instance.close()

    def broker(self) -> RedisBroker:
        if self._broker is None:
            self._broker = create_broker(self.settings.redis_url or "")
        return self._broker

    async def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(create_embedder, self.settings)
        return self._embedder

    def call_options_for(self, user_id: str, timeout: float | None = None, *,
                         collections: tuple[str, ...] | None = None) -> dict[str, object]:
        """A call on behalf of the owner of a document or turn; `collections` names the collections the
        call may write chunks into (the document's)."""
        cache_key = (user_id, collections)
        token, expires = self._tokens.get(cache_key, ("", 0.0))
        if time.time() > expires - TOKEN_TTL_SECONDS / 2:
            token = mint_token(self.secret, user_id, TOKEN_TTL_SECONDS, collections=collections)
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[cache_key] = (token, time.time() + TOKEN_TTL_SECONDS)
        return call_options(token, timeout or self.settings.grpc_deadline_seconds)

    async def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
        await self.channel.close()
        await self.pool.close()
