"""The chat service process: `chat_service(settings)` builds ChatService whole — the Postgres pool, the
retrieval client, the enqueuer, the answerer — and `serve()` runs it.

SERVING once Postgres, Redis and the retrieval service answer. The LLM endpoint, when one is
configured, is not part of readiness: it is a remote service whose outage is reported per call
(UNAVAILABLE / LLM_*), and a rewrite or answer must not wait on a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import asyncpg
import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from docent.v1 import chat_pb2_grpc, ingest_pb2_grpc, retrieval_pb2_grpc
from services.chat.answerers import create_answering
from services.chat.collections import CollectionScope
from services.chat.history import token_counter
from services.chat.pipeline import ChatPipeline
from services.chat.servicer import ChatServicer
from services.runtime import db
from services.runtime.auth import jwt_secret
from services.runtime.config import Settings
from services.runtime.grpc_client import create_channel
from services.runtime.grpc_server import ServiceDefinition
from services.runtime.membership import MembershipEpochs
from services.runtime.names import CHAT_SERVICE, RETRIEVAL_SERVICE
from services.runtime.queue import Enqueuer
from services.runtime.quotas import Quotas, RateLimiter

log = structlog.get_logger("docent.chat")


@dataclass(frozen=True)
class ChatService:
    servicer: ChatServicer
    pool: asyncpg.Pool
    enqueuer: Enqueuer
    retrieval_channel: grpc.aio.Channel
    resources: contextlib.AsyncExitStack

    def register(self, server: grpc.aio.Server) -> None:
        chat_pb2_grpc.add_ChatServiceServicer_to_server(self.servicer, server)

    async def check_ready(self) -> bool:
        if not (await db.ping(self.pool) and await self.enqueuer.ping()):
            return False
        try:
            reply = await health_pb2_grpc.HealthStub(self.retrieval_channel).Check(
                health_pb2.HealthCheckRequest(service=RETRIEVAL_SERVICE), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.resources.aclose()


async def build_chat_service(settings: Settings) -> ChatService:
    async with contextlib.AsyncExitStack() as stack:
        pool = await db.open_migrated_pool(settings.database_url or "", ["chat"], max_size=settings.db_pool_max)
        stack.push_async_callback(pool.close)
        enqueuer = Enqueuer(settings.redis_url or "")
        stack.callback(enqueuer.close)
        channel = create_channel(settings.target("retrieval"))
        stack.push_async_callback(channel.close)
        ingest_channel = create_channel(settings.target("ingest"))
        stack.push_async_callback(ingest_channel.close)
        membership = MembershipEpochs(settings.redis_url)
        stack.push_async_callback(membership.close)
        scope = CollectionScope(ingest_pb2_grpc.IngestServiceStub(ingest_channel), jwt_secret(settings), membership)
        answerer, rewriter = create_answering(settings)
        stack.push_async_callback(answerer.close)
        count_tokens = await asyncio.to_thread(token_counter)
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        pipeline = ChatPipeline(settings, pool, retrieval, enqueuer, answerer, rewriter, count_tokens, scope)
        log.info("answerer", model=answerer.model, llm_base_url=settings.llm_base_url or None,
                 history_token_budget=settings.history_token_budget)
        limiter = RateLimiter(settings.redis_url)
        stack.push_async_callback(limiter.close)
        quotas = Quotas(limiter, chats_per_minute=settings.quota_chats_per_minute,
                        uploads_per_minute=settings.quota_uploads_per_minute)
        service = ChatService(ChatServicer(settings, pipeline, pool, retrieval, enqueuer, quotas), pool, enqueuer,
                              channel, stack.pop_all())
    return service


def chat_service(settings: Settings) -> ServiceDefinition:
    return ServiceDefinition("chat", (CHAT_SERVICE,), lambda: build_chat_service(settings), checks_revocation=True,
                             accepts_api_keys=True)
