"""ChatService: answers with citations, conversations, and real forgetting."""

from __future__ import annotations

import asyncpg
import grpc
import structlog
from google.protobuf import empty_pb2

from docent.v1 import chat_pb2, chat_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.chat import conversations, records
from services.chat.pipeline import ChatPipeline, Delta, Started, Stored, conversation_not_found
from services.runtime.call_context import (
    current_identity,
    current_token,
    require_admin,
    require_write,
)
from services.runtime.config import Settings
from services.runtime.errors import Internal, from_rpc_error
from services.runtime.grpc_client import call_options
from services.runtime.names import INDEX_CHAT_TURN
from services.runtime.pagination import page_request
from services.runtime.queue import MEMORY_QUEUE, Enqueuer
from services.runtime.quotas import Quotas

log = structlog.get_logger("docent.chat")


def _owner() -> conversations.Owner:
    identity = current_identity()
    return conversations.Owner(identity.user_id, identity.confined_key_id)


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, settings: Settings, pipeline: ChatPipeline, pool: asyncpg.Pool,
                 retrieval: retrieval_pb2_grpc.RetrievalServiceStub, enqueuer: Enqueuer, quotas: Quotas) -> None:
        self.settings = settings
        self.quotas = quotas
        self.pipeline = pipeline
        self.pool = pool
        self.retrieval = retrieval
        self.enqueuer = enqueuer

    async def Chat(self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> chat_pb2.ChatResponse:
        await self.quotas.admit_chat(current_identity())
        turn = None
        async for event in self.pipeline.run(_owner(), current_token(), request.query, request.options):
            if isinstance(event, Stored):
                turn = event.turn
        if turn is None:
            raise Internal("the chat pipeline ended without a turn")
        return chat_pb2.ChatResponse(turn=turn)

    async def StreamChat(self, request: chat_pb2.StreamChatRequest, context: grpc.aio.ServicerContext):
        await self.quotas.admit_chat(current_identity())
        conversation_id = ""
        async for event in self.pipeline.run(_owner(), current_token(), request.query, request.options):
            if isinstance(event, Started):
                conversation_id = event.conversation_id
            elif isinstance(event, Delta):
                yield chat_pb2.StreamChatResponse(delta=event.text, conversation_id=conversation_id)
            else:
                conversation_id = event.turn.conversation_id
                yield chat_pb2.StreamChatResponse(turn=event.turn, conversation_id=conversation_id)

    async def ListConversations(self, request: chat_pb2.ListConversationsRequest,
                                context: grpc.aio.ServicerContext) -> chat_pb2.ListConversationsResponse:
        page_size, cursor = page_request(request.page_size, request.page_token)
        rows, next_cursor = await conversations.list_page(self.pool, _owner(), page_size, cursor)
        return chat_pb2.ListConversationsResponse(
            conversations=[records.conversation_to_pb(row) for row in rows],
            next_page_token=next_cursor.encode() if next_cursor else "")

    async def GetConversation(self, request: chat_pb2.GetConversationRequest,
                              context: grpc.aio.ServicerContext) -> chat_pb2.Conversation:
        owner = _owner()
        row = await conversations.get(self.pool, owner, request.conversation_id)
        if row is None:
            raise conversation_not_found(request.conversation_id)
        return records.conversation_to_pb(row, await conversations.turns(self.pool, owner.user_id, row["id"]))

    async def DeleteConversation(self, request: chat_pb2.DeleteConversationRequest,
                                 context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        """Memory vectors, then rows, then the vectors once more: a memory write racing the delete
        either lands before the second vector delete, or finds its turn gone and removes itself."""
        user_id = require_write().user_id
        row = await conversations.get(self.pool, _owner(), request.conversation_id)
        if row is None:
            raise conversation_not_found(request.conversation_id)
        conversation_id = str(row["id"])
        await self._forget(conversation_id)  # if the store is down, the rows stay and the delete can be retried
        await conversations.delete(self.pool, user_id, row["id"])
        try:
            await self._forget(conversation_id)
        except Exception as error:  # the first pass succeeded; only a racing memory write could be left
            log.warning("conversation_memory_second_pass_failed", conversation_id=conversation_id,
                        error=type(error).__name__)
        log.info("conversation_deleted", conversation_id=conversation_id, turns=row["turn_count"])
        return empty_pb2.Empty()

    async def ReindexMemory(self, request: chat_pb2.ReindexMemoryRequest,
                            context: grpc.aio.ServicerContext) -> chat_pb2.ReindexMemoryResponse:
        """Operator only: every turn's memory is embedded again; a turn whose message is lost (Redis down)
        is queued by the memory sweep."""
        require_admin()
        turn_ids = await conversations.forget_all_memory(self.pool)
        enqueued = 0
        try:
            for turn_id in turn_ids:
                await self.enqueuer.enqueue(MEMORY_QUEUE, INDEX_CHAT_TURN, str(turn_id))
                enqueued += 1
        except Exception as error:  # the memory sweep picks up what is left
            log.warning("reindex_enqueue_failed", error=type(error).__name__, left=len(turn_ids) - enqueued)
        log.warning("memory_reindex", turns=len(turn_ids), enqueued=enqueued)
        return chat_pb2.ReindexMemoryResponse(turns_requeued=len(turn_ids))

    async def _forget(self, conversation_id: str) -> None:
        try:
            await self.retrieval.DeleteConversationMemory(
                retrieval_pb2.DeleteConversationMemoryRequest(conversation_id=conversation_id),
                **call_options(current_token(), self.settings.grpc_deadline_seconds))
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
