"""The error model: domain errors with a gRPC status code and a google.rpc.ErrorInfo reason.

Services raise `DocentError` subclasses; the server interceptor turns them into a gRPC status
whose details carry ErrorInfo(reason=UPPER_SNAKE, domain="docent", metadata). Anything else
becomes INTERNAL with a generic message: a Python exception's text never reaches a client.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "docent"
MAX_MESSAGE_CHARS = 1000
MAX_METADATA_CHARS = 200


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DocentError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, retry_after: float | None = None,
                 **metadata: object) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason
        # bounded: a caller's oversized id echoed back must not overflow the status headers (8 KB)
        self.message = _bounded(message, MAX_MESSAGE_CHARS)
        self.metadata = {key: _bounded(str(value), MAX_METADATA_CHARS) for key, value in metadata.items()}
        # when to try again: sent as google.rpc.RetryInfo, and as Retry-After by the gateway
        self.retry_after = retry_after
        if retry_after is not None:
            self.metadata.setdefault("retry_after_seconds", str(max(1, math.ceil(retry_after))))

    def to_status(self) -> grpc.Status:
        return build_status(self.code, self.message, self.reason, self.metadata, self.retry_after)


class InvalidArgument(DocentError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(DocentError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(DocentError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DocentError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DocentError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(DocentError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(DocentError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unavailable(DocentError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(DocentError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Internal(DocentError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def build_status(code: grpc.StatusCode, message: str, reason: str,
                 metadata: dict[str, str] | None = None, retry_after: float | None = None) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    details = [any_pb2.Any()]
    details[0].Pack(info)
    if retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(1, math.ceil(retry_after * 1000)))
        details.append(any_pb2.Any())
        details[1].Pack(retry)
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=details)
    )


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo carried by a failed call, if any (client side)."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


_BY_CODE: dict[grpc.StatusCode, type[DocentError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted,
                Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded, Internal)
}


def from_rpc_error(error: grpc.RpcError) -> DocentError:
    """Re-raise an upstream failure as our own error, keeping its code and reason.

    Used where one service calls another and the caller's client should see the real cause
    (e.g. NOT_FOUND from ingest), not a generic INTERNAL.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    info = error_info(error)
    if info is None and code == grpc.StatusCode.UNAVAILABLE:
        # no ErrorInfo: the service itself could not be reached (stopped, restarting); its transport
        # text ("failed to connect to all addresses; ipv4:…") is not for users
        return Unavailable("an upstream service is unavailable (restarting?); try again shortly",
                           reason="UPSTREAM_UNAVAILABLE", retry_after_seconds=2)
    if info is None and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("the request did not finish within its deadline", reason="DEADLINE_EXCEEDED")
    cls = _BY_CODE.get(code, Unavailable if code == grpc.StatusCode.UNKNOWN else Internal)
    message = error.details() if hasattr(error, "details") else "upstream call failed"
    metadata = dict(info.metadata) if info else {}
    retry_after = metadata.pop("retry_after_seconds", None)
    return cls(message or "upstream call failed", reason=info.reason if info else None,
               retry_after=float(retry_after) if retry_after else None, **metadata)


def backing_outage(error: BaseException) -> Unavailable | None:
    """Postgres or Redis unreachable (down, restarting, in crash recovery) as UNAVAILABLE with a reason.

    A handler does not catch these one by one: the interceptor turns them into a 503-class status the
    client may retry, instead of INTERNAL, and the pools reconnect once the server is back.
    """
    import asyncpg
    import redis

    if isinstance(error, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                          asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError)):
        return Unavailable("the database is unavailable (restarting?); try again shortly",
                           reason="DATABASE_UNAVAILABLE", retry_after_seconds=2)
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return Unavailable("the queue is unavailable (restarting?); try again shortly",
                           reason="QUEUE_UNAVAILABLE", retry_after_seconds=2)
    if isinstance(error, (ConnectionError, FileNotFoundError)):  # a refused or missing socket (embedded servers)
        return Unavailable("a backing service is unavailable (restarting?); try again shortly",
                           reason="BACKING_UNAVAILABLE", retry_after_seconds=2)
    return None


def unstorable_text(error: BaseException) -> InvalidArgument | None:
    """Text Postgres cannot store (a NUL byte, or bytes the database encoding has no character for) as
    INVALID_ARGUMENT: bad input, not a server failure."""
    import asyncpg

    if isinstance(error, (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError)):
        return InvalidArgument("the text contains a character that cannot be stored (e.g. a NUL byte)",
                               reason="TEXT_INVALID")
    return None
