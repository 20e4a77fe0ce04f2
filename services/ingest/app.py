"""The ingest service process: Postgres pool, the enqueuer, a retrieval client and IngestService."""

from __future__ import annotations

import asyncpg
import grpc

from docent.v1 import ingest_pb2_grpc, retrieval_pb2_grpc
from services.ingest.events import DocumentEvents
from services.ingest.servicer import IngestServicer
from services.runtime import db
from services.runtime.auth import RevocationList
from services.runtime.config import Settings
from services.runtime.grpc_client import create_channel
from services.runtime.names import INGEST_SERVICE
from services.runtime.queue import Enqueuer


class IngestApp:
    name = "ingest"
    service_names = (INGEST_SERVICE,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.revocations: RevocationList | None = None
        self.pool: asyncpg.Pool | None = None
        self.enqueuer: Enqueuer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.events: DocumentEvents | None = None
        self.servicer = IngestServicer(settings)

    async def start(self) -> None:
        self.pool = await db.create_pool(self.settings.database_url or "", max_size=self.settings.db_pool_max)
        self.revocations = RevocationList(self.pool)
        self.enqueuer = Enqueuer(self.settings.redis_url or "")
        self.channel = create_channel(self.settings.target("retrieval"))
        self.events = DocumentEvents(self.settings.database_url or "")
        self.servicer.attach(self.pool, self.enqueuer, retrieval_pb2_grpc.RetrievalServiceStub(self.channel),
                             self.events)

    def register(self, server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(self.servicer, server)

    async def is_token_revoked(self, token_id: str) -> bool:
        """Asked by the interceptor on every call: a logged-out token is refused here too."""
        return await self.revocations.is_revoked(token_id) if self.revocations else False

    async def check_ready(self) -> bool:
        return bool(self.pool and self.enqueuer and await db.ping(self.pool) and await self.enqueuer.ping())

    async def close(self) -> None:
        if self.events:
            await self.events.close()
        if self.channel:
            await self.channel.close()
        if self.enqueuer:
            self.enqueuer.close()
        if self.pool:
            await self.pool.close()
