"""Dramatiq actor of the `memory` queue: a stored chat turn becomes chat-history memory.

`index_chat_turn(turn_id)` takes an id and is idempotent: it embeds the turn, upserts it into the
chat-history collection (the point id derives from the turn id, so a rerun overwrites) and
records the vector id on the row. A turn that no longer exists (its conversation was deleted) is
a no-op; a turn deleted while it was being indexed has its fresh vector removed again.
"""

from __future__ import annotations

import asyncio

import dramatiq
import grpc
import structlog

from docent.v1 import retrieval_pb2
from services.chat import conversations
from services.chat.text import strip_markers
from services.runtime.pagination import timestamp
from services.runtime.queue import MEMORY_QUEUE
from services.runtime.resources import WorkerResources

log = structlog.get_logger("docent.chat.memory")

MAX_RETRIES = 8  # backoff 1 s … 60 s; the sweeper re-enqueues whatever is still unindexed later
INDEXED, ALREADY_INDEXED, GONE = "indexed", "already_indexed", "gone"


def memory_text(query: str, answer: str) -> str:
    """What is embedded: the same "User: … / Assistant: …" text the store keeps for the turn."""
    return f"User: {query}\nAssistant: {answer}"


async def index_turn(resources: WorkerResources, turn_id: str) -> str:
    """The work of `index_chat_turn`; returns what happened (indexed, already_indexed, gone)."""
    pool = resources.pool
    row = await conversations.turn_to_index(pool, turn_id)
    if row is None:
        log.info("memory_turn_gone", turn_id=turn_id)
        return GONE
    if row["memory_indexed_at"] is not None and row["vector_id"]:
        return ALREADY_INDEXED
    user_id = row["user_id"]
    # the answer's [n] markers refer to that turn's sources; they mean nothing in memory
    answer = strip_markers(row["answer"])
    embedder = await resources.embedder()
    vector = (await asyncio.to_thread(embedder.embed, [memory_text(row["query"], answer)]))[0]
    request = retrieval_pb2.UpsertChatTurnRequest(
        turn_id=str(row["id"]), conversation_id=str(row["conversation_id"]), user_message=row["query"],
        assistant_message=answer, embedding=vector.tolist(), embedding_model=embedder.model_name)
    created = timestamp(row["created_at"])
    if created is not None:
        request.create_time.CopyFrom(created)
    reply = await resources.retrieval.UpsertChatTurn(request, **resources.call_options_for(user_id))
    if not await conversations.mark_indexed(pool, row["id"], reply.point_id):
        # deleted while we embedded: DeleteConversation's vector deletes may have run before our upsert
        await _forget(resources, user_id, str(row["conversation_id"]))
        log.info("memory_turn_deleted_while_indexing", turn_id=turn_id)
        return GONE
    log.info("memory_indexed", turn_id=turn_id, conversation_id=str(row["conversation_id"]), point_id=reply.point_id)
    return INDEXED


async def _forget(resources: WorkerResources, user_id: str, conversation_id: str) -> None:
    if await resources.pool.fetchval("SELECT 1 FROM conversations WHERE id = $1", conversations.parse_uuid(
            conversation_id)):
        return  # only the turn is gone (not a path the service takes today): keep the conversation's memory
    try:
        await resources.retrieval.DeleteConversationMemory(
            retrieval_pb2.DeleteConversationMemoryRequest(conversation_id=conversation_id),
            **resources.call_options_for(user_id))
    except grpc.aio.AioRpcError as error:
        log.warning("memory_cleanup_failed", conversation_id=conversation_id, code=error.code().name)
        raise


@dramatiq.actor(queue_name=MEMORY_QUEUE, max_retries=MAX_RETRIES, min_backoff=1_000, max_backoff=60_000,
                time_limit=5 * 60 * 1000)
async def index_chat_turn(turn_id: str) -> None:
    await index_turn(await WorkerResources.get(), turn_id)
