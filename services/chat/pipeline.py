"""One chat turn: history → standalone question → retrieval → answer → store → enqueue memory.

Chat and StreamChat both run this; StreamChat forwards the answer pieces as they come, Chat
waits for the stored turn. Nothing is written until the answer is complete: an answerer failure
(LLM down) leaves no turn and, for a new conversation, no conversation.

The conversation being answered is excluded from chat-history search whenever its recent turns
are given to the answerer (always, unless DOCENT_HISTORY_TOKEN_BUDGET=0): those turns are
already in the answerer's context, in order and verbatim (from Postgres, so even a turn whose
memory is not indexed yet counts), and searching them again would spend the chat-history slots
on copies of the last few turns — the current conversation would crowd out the earlier ones that
search is for. The cost: turns of this conversation older than the token budget are out of
reach of search too (retrieval can exclude a conversation, not a set of turns).
`chat_context_used` is therefore true when recent turns or chat-history search results were
given to the answerer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
import grpc
import structlog

from docent.v1 import chat_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.chat import conversations, memory_vectors, records
from services.chat.answer import Answerer, AnswerRequest, citations, context_from_search
from services.chat.collections import CollectionScope
from services.chat.history import MAX_TURNS_LOADED, HistoryTurn, within_budget
from services.chat.rewrite import Rewriter
from services.runtime.config import Settings
from services.runtime.errors import InvalidArgument, NotFound, from_rpc_error
from services.runtime.grpc_client import call_options
from services.runtime.names import INDEX_CHAT_TURN, MAX_QUERY_CHARS
from services.runtime.queue import MEMORY_QUEUE, Enqueuer

log = structlog.get_logger("docent.chat")



@dataclass(frozen=True)
class Started:
    conversation_id: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Stored:
    turn: chat_pb2.ChatTurn


def conversation_not_found(conversation_id: str) -> NotFound:
    return NotFound(f"conversation {conversation_id} not found", reason="CONVERSATION_NOT_FOUND",
                    conversation_id=conversation_id)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


class ChatPipeline:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, retrieval: retrieval_pb2_grpc.RetrievalServiceStub,
                 enqueuer: Enqueuer | None, answerer: Answerer, rewriter: Rewriter,
                 count_tokens: Callable[[str], int], scope: CollectionScope) -> None:
        self.settings = settings
        self.scope = scope
        self.pool = pool
        self.retrieval = retrieval
        self.enqueuer = enqueuer
        self.answerer = answerer
        self.rewriter = rewriter
        self.count_tokens = count_tokens

    async def resolve_conversation(self, owner: conversations.Owner, conversation_id: str) -> tuple[uuid.UUID, bool]:
        """(id, is_new); an id the caller does not own is NOT_FOUND, exactly like one that never existed."""
        if not conversation_id:
            return uuid.uuid4(), True
        row = await conversations.get(self.pool, owner, conversation_id)
        if row is None:
            raise conversation_not_found(conversation_id)
        return row["id"], False

    async def history(self, user_id: str, conversation_id: uuid.UUID) -> list[HistoryTurn]:
        if self.settings.history_token_budget <= 0:
            return []
        rows = await conversations.recent_turns(self.pool, user_id, conversation_id, MAX_TURNS_LOADED)
        turns = [HistoryTurn(str(row["id"]), row["query"], row["standalone_query"], row["answer"]) for row in rows]
        return within_budget(turns, self.settings.history_token_budget, self.count_tokens)

    async def search(self, query: str, options: chat_pb2.ChatOptions, exclude_conversation: str,
                     token: str, *, memory: bool = True) -> retrieval_pb2.SearchResponse:
        request = retrieval_pb2.SearchRequest(
            query=query[:MAX_QUERY_CHARS], top_k=options.top_k, mode=options.mode,
            document_ids=list(options.document_ids), exclude_conversation_id=exclude_conversation,
            return_query_embedding=True)
        if options.HasField("weights"):
            request.weights.CopyFrom(options.weights)
        if not memory:  # documents only: the caller may not draw on its user's chat memory
            if not request.weights.HasField("documents"):
                request.weights.documents = self.settings.weight_documents
            request.weights.chat_history = 0.0
        try:
            return await self.retrieval.Search(request, **call_options(token, self.settings.grpc_deadline_seconds))
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def run(self, owner: conversations.Owner, token: str, query: str,
                  options: chat_pb2.ChatOptions) -> AsyncIterator[Started | Delta | Stored]:
        """One turn for `owner`: a confined API key (owner.key_id) reaches only its own conversations and
        searches documents without its user's chat memory."""
        user_id = owner.user_id
        started = time.perf_counter()
        query = query.strip()
        if not query:
            raise InvalidArgument("query is required", reason="QUERY_REQUIRED")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"query is longer than {MAX_QUERY_CHARS} characters", reason="QUERY_TOO_LONG")
        # which collections to search: asked of the ingest service while the conversation is read
        search_token = asyncio.ensure_future(self.scope.search_token(user_id, token, list(options.collection_ids)))
        try:
            conversation_id, is_new = await self.resolve_conversation(owner, options.conversation_id)
            yield Started(str(conversation_id))
            history = [] if is_new else await self.history(user_id, conversation_id)
            standalone = await self.rewriter.standalone(query, history)
            retrieval_token = await search_token
        finally:
            if not search_token.done():
                search_token.cancel()

        retrieval_started = time.perf_counter()
        # recent turns are in the context already: search the other conversations (module docstring)
        found = await self.search(standalone, options, str(conversation_id) if history else "", retrieval_token,
                                  memory=owner.key_id is None)
        retrieval_ms = _ms(retrieval_started)

        context = context_from_search(found.results)
        request = AnswerRequest(query=query, standalone_query=standalone, history=history,
                                documents=context.documents, memories=context.memories)
        answer_started = time.perf_counter()
        pieces: list[str] = []
        async for piece in self.answerer.stream(request):
            pieces.append(piece)
            yield Delta(piece)
        answer = "".join(pieces)
        answer_ms = _ms(answer_started)

        sources = citations(answer, context.documents, query)
        turn = conversations.NewTurn(
            id=uuid.uuid4(), conversation_id=conversation_id, user_id=user_id, query=query,
            standalone_query=standalone, answer=answer, sources=records.to_json_list(sources),
            context=records.to_json_list(found.results), chat_context_used=request.uses_chat_history,
            model=self.answerer.model, retrieval_ms=retrieval_ms, answer_ms=answer_ms,
            history_turn_ids=[uuid.UUID(turn.id) for turn in history], api_key_id=owner.key_id)
        row = await self._store(turn, is_new, started)
        if row is None:
            raise conversation_not_found(str(conversation_id))  # deleted while we answered
        await self._enqueue_memory(str(row["id"]), found)
        log.info("chat_turn", conversation_id=str(conversation_id), turn_id=str(row["id"]), new_conversation=is_new,
                 history_turns=len(history), documents=len(context.documents), memories=len(context.memories),
                 sources=len(sources), model=turn.model, retrieval_ms=retrieval_ms, answer_ms=answer_ms,
                 storage_ms=turn.storage_ms, total_ms=_ms(started))
        yield Stored(records.turn_to_pb(row))

    async def _store(self, turn: conversations.NewTurn, is_new: bool, started: float) -> asyncpg.Record | None:
        """One transaction. The stored storage/total times run up to the turn's own INSERT (they are
        values in that row), so they cover the pool, BEGIN and the conversation row but not the commit."""
        storage_started = time.perf_counter()

        def stamp(new_turn: conversations.NewTurn) -> None:
            new_turn.storage_ms = _ms(storage_started)
            new_turn.total_ms = _ms(started)

        async with self.pool.acquire() as conn:
            return await conversations.store_turn(conn, turn, new_conversation=is_new, before_insert=stamp)

    async def _enqueue_memory(self, turn_id: str, found: retrieval_pb2.SearchResponse) -> None:
        """The message carries the standalone question's vector that Search computed: the worker makes the
        turn searchable with it at once, with no model run (services/chat/actors.py). A lost enqueue is not
        an error: the sweeper re-enqueues turns whose memory is not indexed."""
        if self.enqueuer is None:
            return
        vector = memory_vectors.pack(found.query_embedding) if found.query_embedding else ""
        try:
            await self.enqueuer.enqueue(MEMORY_QUEUE, INDEX_CHAT_TURN, turn_id, vector, found.query_embedding_model)
        except Exception as error:  # Redis down: the turn is safe in Postgres
            log.warning("memory_enqueue_failed", turn_id=turn_id, error=type(error).__name__)
