"""Chat: the seed's POST /api/chat/, streaming over SSE, and conversations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse

from docent.v1 import chat_pb2
from services.gateway.accounts import CallerDep, StateDep
from services.gateway.errors import INTERNAL, UNAUTHORIZED, UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE, error_responses
from services.gateway.schemas import (
    ChatConversationEvent,
    ChatIn,
    ChatOut,
    ChatSourcesEvent,
    ChatTokenEvent,
    ConversationList,
    ConversationOut,
    ErrorEvent,
    sse_openapi,
)
from services.gateway.sse import event, open_stream, relay, sse_response

router = APIRouter(prefix="/api/chat", tags=["chat"])

_COMMON = {401: UNAUTHORIZED, 500: INTERNAL, 503: UPSTREAM_UNAVAILABLE, 504: UPSTREAM_TIMEOUT}
_NOT_FOUND = {404: "no such conversation for this user (CONVERSATION_NOT_FOUND)"}
_ASK = {**_COMMON, **_NOT_FOUND, 400: "invalid query or options (INVALID_ARGUMENT, ...)"}
_ERRORS = error_responses({**_COMMON, **_NOT_FOUND}, validation=True)
STREAM_DESCRIPTION = """The answer as server-sent events while it is produced, then its sources and the stored turn.

Errors before the stream starts (bad token, unknown conversation, invalid options) are HTTP errors as for
POST /api/chat/. Each event's `data` is one line of JSON:

| event | data | when |
|---|---|---|
| `conversation` | `ChatConversationEvent` (`conversation_id`) | first, once: the turn's conversation (new or given) |
| `token` | `ChatTokenEvent` (`delta`) | each piece of the answer as it is produced |
| `sources` | `ChatSourcesEvent` (`sources`, `chat_context_used`, `conversation_id`) | once the answer is complete |
| `done` | `ChatOut` (the stored turn, as POST /api/chat/ answers it) | last; the stream ends |
| `error` | `ErrorEvent` (`detail`, `reason`, `status`) | the stream failed after it started; it ends |

Comment lines (`: ping`) keep a quiet stream open every 15 s.
"""


@router.post("/", response_model=ChatOut, response_model_exclude_none=True, operation_id="chat",
             responses=error_responses(_ASK, validation=True))
async def chat(body: ChatIn, caller: CallerDep, state: StateDep) -> ChatOut:
    """Answer over the caller's documents and chat memory, with sources.

    `chat_context_used` tells whether earlier turns were part of the context; `explain: true`
    adds the merged retrieval context (`context`: source, score, weight, rank).
    """
    reply = await state.chat.Chat(chat_pb2.ChatRequest(query=body.query, options=body.options()),
                                  **state.options(caller, state.chat_timeout))
    return ChatOut.from_proto(reply.turn, body.explain)


class _StreamFrames:
    """SSE frames of one StreamChat: `conversation` (once, early), `token`s, `sources`, `done`."""

    def __init__(self, explain: bool) -> None:
        self.explain = explain
        self.announced = False

    def __call__(self, message: chat_pb2.StreamChatResponse) -> Iterable[bytes]:
        if not self.announced and message.conversation_id:
            self.announced = True
            yield event("conversation", {"conversation_id": message.conversation_id})
        kind = message.WhichOneof("event")
        if kind == "delta":
            yield event("token", {"delta": message.delta})
        elif kind == "turn":
            turn = ChatOut.from_proto(message.turn, self.explain)
            yield event("sources", ChatSourcesEvent.from_turn(turn))
            yield event("done", turn)


@router.post("/stream", response_class=StreamingResponse, operation_id="streamChat", description=STREAM_DESCRIPTION,
             responses={**error_responses(_ASK, validation=True), 200: sse_openapi(
                 {"conversation": ChatConversationEvent, "token": ChatTokenEvent, "sources": ChatSourcesEvent,
                  "done": ChatOut, "error": ErrorEvent},
                 "`conversation`, then `token` events, then `sources` and `done` (the stored turn); "
                 "`error` on failure",
                 'event: conversation\ndata: {"conversation_id":"8a0c3e57-…"}\n\n'
                 'event: token\ndata: {"delta":"read.dta handles"}\n\n'
                 'event: sources\ndata: {"sources":[…],"chat_context_used":false,"conversation_id":"8a0c3e57-…"}\n\n'
                 'event: done\ndata: {"answer":"read.dta handles Stata versions 5 to 12 [1].",…}\n\n')})
async def chat_stream(body: ChatIn, caller: CallerDep, state: StateDep) -> StreamingResponse:
    call = state.chat.StreamChat(chat_pb2.StreamChatRequest(query=body.query, options=body.options()),
                                 **state.options(caller, state.chat_timeout))
    first = await open_stream(call)
    return sse_response(relay(call, first, _StreamFrames(body.explain)))


@router.get("/conversations", response_model=ConversationList, operation_id="listConversations",
            responses=error_responses(_COMMON, validation=True))
async def list_conversations(caller: CallerDep, state: StateDep,
                             limit: Annotated[int, Query(ge=1, le=100)] = 50,
                             page_token: str = "") -> ConversationList:
    """The caller's conversations, most recently updated first."""
    reply = await state.chat.ListConversations(
        chat_pb2.ListConversationsRequest(page_size=limit, page_token=page_token), **state.options(caller))
    return ConversationList.from_proto(reply)


@router.get("/conversations/{conversation_id}", response_model=ConversationOut, response_model_exclude_none=True,
            operation_id="getConversation", responses=_ERRORS)
async def get_conversation(conversation_id: str, caller: CallerDep, state: StateDep,
                           explain: bool = False) -> ConversationOut:
    """A conversation with its turns in order (each with its sources)."""
    conversation = await state.chat.GetConversation(
        chat_pb2.GetConversationRequest(conversation_id=conversation_id), **state.options(caller))
    return ConversationOut.from_proto(conversation, with_turns=True, explain=explain)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT,
               operation_id="deleteConversation", responses=_ERRORS)
async def delete_conversation(conversation_id: str, caller: CallerDep, state: StateDep) -> Response:
    """Forget a conversation: its turns and their chat-memory vectors."""
    await state.chat.DeleteConversation(chat_pb2.DeleteConversationRequest(conversation_id=conversation_id),
                                        **state.options(caller))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
