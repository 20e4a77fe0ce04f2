"""What the gateway holds open (channels, stubs, the accounts pool) and the per-request context."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import asyncpg
import grpc
from fastapi import Request

from docent.v1 import chat_pb2_grpc, ingest_pb2_grpc
from services.runtime.config import Settings
from services.runtime.grpc_client import call_options

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_request_id", default="")
_request_path: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_request_path", default="")
# WatchDocument streams until a terminal state; a browser tab may watch a long document
WATCH_TIMEOUT_SECONDS = 3600.0


def request_id() -> str:
    return _request_id.get()


def set_request_id(value: str, path: str = "") -> contextvars.Token[str]:
    _request_path.set(path)
    return _request_id.set(value)


def reset_request_id(token: contextvars.Token[str]) -> None:
    _request_id.reset(token)


def request_upstream() -> str:
    """The gRPC service the current REST request needs, to name it when it is unavailable."""
    path = _request_path.get()
    if path.startswith("/api/chat"):
        return "chat"
    if path.startswith("/api/upload"):
        return "ingest"
    return ""


@dataclass(frozen=True)
class Caller:
    """The authenticated user of a REST request; `token` is forwarded to the gRPC services."""

    user_id: str
    token: str
    token_id: str


@dataclass
class GatewayState:
    settings: Settings
    secret: str
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    pool: asyncpg.Pool | None = None
    ingest: ingest_pb2_grpc.IngestServiceStub | None = None
    chat: chat_pb2_grpc.ChatServiceStub | None = None

    def options(self, caller: Caller, timeout: float | None = None) -> dict[str, object]:
        """Deadline, the caller's bearer token and the request id for one gRPC call."""
        return call_options(caller.token, timeout or self.settings.grpc_deadline_seconds, request_id() or None)

    @property
    def chat_timeout(self) -> float:
        # an LLM answer may take the LLM's own timeout on top of retrieval and storage
        return self.settings.grpc_deadline_seconds + self.settings.llm_timeout_seconds

    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            from services.gateway.errors import ApiError

            raise ApiError(503, "accounts database is not available", "DATABASE_UNAVAILABLE")
        return self.pool


def get_state(request: Request) -> GatewayState:
    return request.app.state.docent
