"""The chat service process: Postgres pool, the retrieval client, the enqueuer, the answerer and ChatService.

SERVING once Postgres, Redis and the retrieval service answer. The LLM endpoint, when one is
configured, is not part of readiness: it is a remote service whose outage is reported per call
(UNAVAILABLE / LLM_*), and a rewrite or answer must not wait on a probe.
"""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from docent.v1 import chat_pb2_grpc, retrieval_pb2_grpc
from services.chat.answer import Answerer
from services.chat.answer_extractive import ExtractiveAnswerer
from services.chat.answer_llm import LLMAnswerer, LLMClient
from services.chat.history import token_counter
from services.chat.pipeline import ChatPipeline
from services.chat.rewrite import Rewriter
from services.chat.servicer import ChatServicer
from services.runtime import db
from services.runtime.auth import RevocationList
from services.runtime.config import Settings
from services.runtime.grpc_client import create_channel
from services.runtime.names import CHAT_SERVICE, RETRIEVAL_SERVICE
from services.runtime.queue import Enqueuer

log = structlog.get_logger("docent.chat")


def create_answering(settings: Settings) -> tuple[Answerer, Rewriter]:
    """An OpenAI-compatible LLM when DOCENT_LLM_BASE_URL is set, else the offline extractive answerer
    with the rule-based follow-up rewrite."""
    if settings.llm_base_url:
        client = LLMClient.from_settings(settings)
        return LLMAnswerer(client), Rewriter(client)
    return ExtractiveAnswerer(), Rewriter()


class ChatApp:
    name = "chat"
    service_names = (CHAT_SERVICE,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.revocations: RevocationList | None = None
        self.pool: asyncpg.Pool | None = None
        self.enqueuer: Enqueuer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.answerer: Answerer | None = None
        self.servicer = ChatServicer(settings)

    async def start(self) -> None:
        self.pool = await db.create_pool(self.settings.database_url or "", max_size=self.settings.db_pool_max)
        self.revocations = RevocationList(self.pool)
        self.enqueuer = Enqueuer(self.settings.redis_url or "")
        self.channel = create_channel(self.settings.target("retrieval"))
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(self.channel)
        self.answerer, rewriter = create_answering(self.settings)
        count_tokens = await asyncio.to_thread(token_counter)
        pipeline = ChatPipeline(self.settings, self.pool, retrieval, self.enqueuer, self.answerer, rewriter,
                                count_tokens)
        self.servicer.attach(pipeline, self.pool, retrieval)
        log.info("answerer", model=self.answerer.model, llm_base_url=self.settings.llm_base_url or None,
                 history_token_budget=self.settings.history_token_budget)

    def register(self, server: grpc.aio.Server) -> None:
        chat_pb2_grpc.add_ChatServiceServicer_to_server(self.servicer, server)

    async def is_token_revoked(self, token_id: str) -> bool:
        """Asked by the interceptor on every call: a logged-out token is refused here too."""
        return await self.revocations.is_revoked(token_id) if self.revocations else False

    async def check_ready(self) -> bool:
        if not (self.pool and self.enqueuer and self.channel):
            return False
        if not (await db.ping(self.pool) and await self.enqueuer.ping()):
            return False
        try:
            reply = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=RETRIEVAL_SERVICE), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        if self.answerer:
            await self.answerer.close()
        if self.channel:
            await self.channel.close()
        if self.enqueuer:
            self.enqueuer.close()
        if self.pool:
            await self.pool.close()
