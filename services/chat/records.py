"""Rows ↔ protobuf messages: turns, conversations, and the JSON kept in the jsonb columns.

Sources and the retrieval context are stored as the proto3 JSON of Citation / SearchResult, so a
turn read back (GetConversation) is the same message the Chat call returned.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import asyncpg
from google.protobuf import json_format
from google.protobuf.message import Message

from docent.v1 import chat_pb2, retrieval_pb2
from services.runtime.pagination import timestamp


def to_json_list(messages: Iterable[Message]) -> list[dict[str, object]]:
    return [json_format.MessageToDict(message, preserving_proto_field_name=True) for message in messages]


def _from_json_list(raw: str | list[object] | None, cls: type[Message]) -> list[Message]:
    items = json.loads(raw) if isinstance(raw, str) else (raw or [])
    return [json_format.ParseDict(item, cls(), ignore_unknown_fields=True) for item in items]


def turn_to_pb(row: asyncpg.Record) -> chat_pb2.ChatTurn:
    turn = chat_pb2.ChatTurn(
        id=str(row["id"]), conversation_id=str(row["conversation_id"]), query=row["query"],
        standalone_query=row["standalone_query"], answer=row["answer"],
        sources=_from_json_list(row["sources"], chat_pb2.Citation),  # type: ignore[arg-type]
        chat_context_used=row["chat_context_used"],
        context=_from_json_list(row["context"], retrieval_pb2.SearchResult),  # type: ignore[arg-type]
        model=row["model"],
        timings=chat_pb2.TurnTimings(retrieval_ms=row["retrieval_ms"], answer_ms=row["answer_ms"],
                                     storage_ms=row["storage_ms"], total_ms=row["total_ms"]),
        memory_indexed=row["memory_indexed_at"] is not None,
        history_turn_ids=[str(ident) for ident in row["history_turn_ids"] or ()],
    )
    created = timestamp(row["created_at"])
    if created is not None:
        turn.create_time.CopyFrom(created)
    return turn


def conversation_to_pb(row: asyncpg.Record, turns: Sequence[asyncpg.Record] = ()) -> chat_pb2.Conversation:
    conversation = chat_pb2.Conversation(id=str(row["id"]), title=row["title"], turn_count=row["turn_count"],
                                         turns=[turn_to_pb(turn) for turn in turns])
    for field_name, column in (("create_time", "created_at"), ("update_time", "updated_at")):
        stamp = timestamp(row[column])
        if stamp is not None:
            getattr(conversation, field_name).CopyFrom(stamp)
    return conversation
