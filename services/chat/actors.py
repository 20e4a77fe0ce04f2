"""Dramatiq actor of the `memory` queue: a stored chat turn becomes chat-history memory.

`index_chat_turn(turn_id, question_vector="", vector_model="")` is idempotent and works in two steps:
1. When the message carries the vector of the turn's standalone question (the chat service gets it
   from the Search that answered the turn), the turn is written to the chat-history collection with
   it at once: searchable within milliseconds of being stored, with no model run.
2. The memory vector is then replaced by the embedding of the full "User: … / Assistant: …" text,
   which finds the turn better (bench/memory_recall.py, three runs: recall@1 0.78–0.80 against
   0.74–0.77 for the question alone, recall@5 about the same) but costs a model run of up to 256
   tokens. It happens in the same message while the memory queue is short (at most
   REFINE_BELOW_WAITING messages waiting) and the CPUs are not busy (at most
   DOCENT_MEMORY_REFINE_MAX_CPU of them used lately, services/chat/cpu_load.py: on one machine that
   model run competes with the chat turns' query embeddings); otherwise the worker skips it, so
   memory keeps up and chat keeps its CPU, and the memory sweep queues it again once both are idle.
The point id derives from the turn id, so each write overwrites the last. A turn that no longer
exists (its conversation was deleted) is a no-op; a turn deleted while it was being indexed has its
fresh vector removed again.
"""

from __future__ import annotations

import asyncio

import asyncpg
import dramatiq
import grpc
import numpy as np
import structlog

from docent.v1 import retrieval_pb2
from services.chat import conversations, memory_vectors
from services.chat.cpu_load import CpuLoad
from services.chat.text import strip_markers
from services.runtime import tracing
from services.runtime.pagination import timestamp
from services.runtime.queue import MEMORY_QUEUE, waiting_messages
from services.runtime.resources import WorkerResources

log = structlog.get_logger("docent.chat.memory")

MAX_RETRIES = 8  # backoff 1 s … 60 s; the sweeper re-enqueues whatever is still unindexed later
# the full-text embedding is done at once only while the memory queue is this short
REFINE_BELOW_WAITING = 8
INDEXED, QUESTION_INDEXED, ALREADY_INDEXED, GONE = "indexed", "question_indexed", "already_indexed", "gone"
# this worker process's view of the machine's CPU load, shared by its actor threads
CPU = CpuLoad()


def memory_text(query: str, answer: str) -> str:
    """What is embedded: the same "User: … / Assistant: …" text the store keeps for the turn."""
    return f"User: {query}\nAssistant: {answer}"


async def index_turn(resources: WorkerResources, turn_id: str, question_vector: str = "",
                     vector_model: str = "") -> str:
    """The work of `index_chat_turn`; returns what happened (indexed, question_indexed, already_indexed, gone)."""
    row = await conversations.turn_to_index(resources.pool, turn_id)
    if row is None:
        log.info("memory_turn_gone", turn_id=turn_id)
        return GONE
    if row["memory_refined_at"] is not None and row["vector_id"]:
        return ALREADY_INDEXED
    # the answer's [n] markers refer to that turn's sources; they mean nothing in memory
    answer = strip_markers(row["answer"])
    if question_vector and row["memory_indexed_at"] is None:
        vector = memory_vectors.unpack(question_vector)
        if not await _write(resources, row, answer, vector, vector_model, refined=False):
            return GONE
        # the CPU check is free; the queue's length is a Redis round trip, asked only when it decides
        cpu = CPU.busy_share()
        busy = cpu > resources.settings.memory_refine_max_cpu
        backlog = None if busy else await asyncio.to_thread(waiting_messages, resources.broker(), MEMORY_QUEUE)
        if busy or backlog > REFINE_BELOW_WAITING:
            log.info("memory_indexed", turn_id=turn_id, vector="question", backlog=backlog, cpu=round(cpu, 2))
            return QUESTION_INDEXED
    embedder = await resources.embedder()
    text = memory_text(row["query"], answer)
    with tracing.span("memory.embed", {"docent.embedding_model": embedder.model_name}):
        vector = (await asyncio.to_thread(embedder.embed, [text]))[0]
    if not await _write(resources, row, answer, vector, embedder.model_name, refined=True):
        return GONE
    log.info("memory_indexed", turn_id=turn_id, vector="full")
    return INDEXED


async def _write(resources: WorkerResources, row: asyncpg.Record, answer: str, vector: np.ndarray, model: str, *,
                 refined: bool) -> bool:
    """Upsert the turn's memory with `vector` and record it; False when the turn was deleted meanwhile."""
    user_id = row["user_id"]
    request = retrieval_pb2.UpsertChatTurnRequest(
        turn_id=str(row["id"]), conversation_id=str(row["conversation_id"]), user_message=row["query"],
        assistant_message=answer, embedding=np.asarray(vector, dtype=float).tolist(),
        embedding_model=model)
    created = timestamp(row["created_at"])
    if created is not None:
        request.create_time.CopyFrom(created)
    reply = await resources.retrieval.UpsertChatTurn(request, **resources.call_options_for(user_id))
    if not await conversations.mark_indexed(resources.pool, row["id"], reply.point_id, refined=refined):
        # deleted while we embedded: DeleteConversation's vector deletes may have run before our upsert
        await _forget(resources, user_id, str(row["conversation_id"]))
        log.info("memory_turn_deleted_while_indexing", turn_id=str(row["id"]))
        return False
    return True


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
async def index_chat_turn(turn_id: str, question_vector: str = "", vector_model: str = "") -> None:
    await index_turn(await WorkerResources.get(), turn_id, question_vector, vector_model)
