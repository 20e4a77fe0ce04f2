"""The current REST request as the gateway's modules see it: its id and the gRPC service it needs.

Set by services.gateway.middleware for every request; read by the error mapping (to name the
unavailable upstream) and by the gRPC call options (to forward X-Request-ID).
"""

from __future__ import annotations

import contextvars

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_request_id", default="")
_request_path: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_request_path", default="")


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
