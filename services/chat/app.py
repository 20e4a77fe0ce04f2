"""The chat service process: Postgres pool, the retrieval client, the enqueuer and ChatService."""

from __future__ import annotations

import asyncpg
import grpc

from docent.v1 import chat_pb2, chat_pb2_grpc
from services.runtime import db
from services.runtime.config import Settings
from services.runtime.queue import Enqueuer

SERVICE_NAME = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name


class ChatApp:
    name = "chat"
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.enqueuer: Enqueuer | None = None

    async def start(self) -> None:
        self.pool = await db.create_pool(self.settings.database_url or "", max_size=self.settings.db_pool_max)
        self.enqueuer = Enqueuer(self.settings.redis_url or "")

    def register(self, server: grpc.aio.Server) -> None:
        chat_pb2_grpc.add_ChatServiceServicer_to_server(chat_pb2_grpc.ChatServiceServicer(), server)

    async def check_ready(self) -> bool:
        return bool(self.pool and self.enqueuer and await db.ping(self.pool) and await self.enqueuer.ping())

    async def close(self) -> None:
        if self.enqueuer:
            self.enqueuer.close()
        if self.pool:
            await self.pool.close()
