"""What the RPC being served knows about its call: the caller, the request id, the deadline.

The interceptors (services.runtime.interceptors) set these for the duration of each RPC; servicers
and the clients they call read them, so a call made on a user's behalf carries the user's token,
request id and what is left of the user's one deadline.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

from services.runtime.auth import Identity
from services.runtime.errors import PermissionDenied, Unauthenticated
from services.runtime.names import personal_collection_id

identity_var: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("docent_identity", default=None)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("docent_request_id", default="")
token_var: contextvars.ContextVar[str] = contextvars.ContextVar("docent_token", default="")
# monotonic time at which the RPC being served expires (its caller's deadline), if it has one
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("docent_deadline", default=None)


@dataclass
class Outcome:
    """How the RPC ended, as the error mapping decided it; read by the canonical log line."""

    code_name: str = "OK"
    reason: str = ""
    messages_sent: int = 0


outcome_var: contextvars.ContextVar[Outcome | None] = contextvars.ContextVar("docent_outcome", default=None)


def current_identity() -> Identity:
    """The authenticated caller of the RPC being served."""
    identity = identity_var.get()
    if identity is None:
        raise Unauthenticated("missing bearer token", reason="TOKEN_MISSING")
    return identity


def require_admin() -> Identity:
    """The caller, who must hold an operator token, for the maintenance RPCs."""
    identity = current_identity()
    if not identity.admin:
        raise PermissionDenied("this is an operator method: call it with a token from `docent token --admin`",
                               reason="ADMIN_REQUIRED")
    return identity


def require_write() -> Identity:
    """The caller, who must be allowed to change documents: a session, or an API key with write access."""
    identity = current_identity()
    if not identity.can_write:
        raise PermissionDenied("this API key is read-only: create a key with write access to upload, replace "
                               "or delete", reason="API_KEY_READ_ONLY")
    return identity


def searchable_collections() -> tuple[str, ...]:
    """The collections whose documents the caller may search or index: what the token names (minted by a
    service that resolved them with the ingest service), else the caller's personal collection, within an
    API key's scope."""
    identity = current_identity()
    if identity.collections is not None:
        found = identity.collections
    else:
        found = (personal_collection_id(identity.user_id),)
    if identity.key is not None and identity.key.collections is not None:
        found = tuple(value for value in found if value in identity.key.collections)
    return found


def current_user_id() -> str:
    return current_identity().user_id


def current_request_id() -> str:
    return request_id_var.get()


def current_token() -> str:
    """The caller's bearer token, to call another service on the caller's behalf."""
    return token_var.get()


def remaining_seconds(limit: float) -> float:
    """`limit`, or less if the RPC being served must be answered sooner: a call made on its behalf
    (to another service, to the LLM) never outlives the user request's one deadline."""
    deadline = deadline_var.get()
    if deadline is None:
        return limit
    return max(min(limit, deadline - time.monotonic()), 0.001)
