"""The ingest service process: `ingest_service(settings)` builds IngestService whole — the Postgres pool,
the enqueuer, a retrieval client, document events — and `serve()` runs it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import asyncpg
import grpc

from docent.v1 import ingest_pb2_grpc, retrieval_pb2_grpc
from services.ingest.events import DocumentEvents
from services.ingest.servicer import IngestServicer
from services.runtime import db
from services.runtime.auth import jwt_secret
from services.runtime.config import Settings
from services.runtime.grpc_client import create_channel
from services.runtime.grpc_server import ServiceDefinition
from services.runtime.membership import MembershipEpochs
from services.runtime.names import INGEST_SERVICE
from services.runtime.queue import Enqueuer
from services.runtime.quotas import Quotas, RateLimiter


@dataclass(frozen=True)
class IngestService:
    servicer: IngestServicer
    pool: asyncpg.Pool
    enqueuer: Enqueuer
    resources: contextlib.AsyncExitStack

    def register(self, server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(self.servicer, server)

    async def check_ready(self) -> bool:
        return await db.ping(self.pool) and await self.enqueuer.ping()

    async def close(self) -> None:
        await self.resources.aclose()


async def build_ingest_service(settings: Settings) -> IngestService:
    async with contextlib.AsyncExitStack() as stack:
        pool = await db.open_migrated_pool(settings.database_url or "", ["ingest"], max_size=settings.db_pool_max)
        stack.push_async_callback(pool.close)
        enqueuer = Enqueuer(settings.redis_url or "")
        stack.callback(enqueuer.close)
        channel = create_channel(settings.target("retrieval"))
        stack.push_async_callback(channel.close)
        events = DocumentEvents(settings.database_url or "")
        stack.push_async_callback(events.close)
        limiter = RateLimiter(settings.redis_url)
        stack.push_async_callback(limiter.close)
        quotas = Quotas(limiter, chats_per_minute=settings.quota_chats_per_minute,
                        uploads_per_minute=settings.quota_uploads_per_minute)
        membership = MembershipEpochs(settings.redis_url)
        stack.push_async_callback(membership.close)
        servicer = IngestServicer(settings, pool, enqueuer, retrieval_pb2_grpc.RetrievalServiceStub(channel), events,
                                  quotas, jwt_secret(settings), membership)
        service = IngestService(servicer, pool, enqueuer, stack.pop_all())
    return service


def ingest_service(settings: Settings) -> ServiceDefinition:
    return ServiceDefinition("ingest", (INGEST_SERVICE,), lambda: build_ingest_service(settings),
                             checks_revocation=True, accepts_api_keys=True)
