"""gRPC status → HTTP: one table, one JSON error shape (`{"detail": ..., "reason": ...}`).

`detail` is what the seed's web client shows; `reason` is the upstream google.rpc.ErrorInfo
reason (UPPER_SNAKE) for clients that want to branch on it. Upstream messages are user-facing by
contract (services never put a Python exception's text in a status), so they are passed through;
INTERNAL/UNKNOWN become a generic message with the request id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.request_context import request_id, request_upstream
from services.gateway.schemas import ErrorOut, ValidationErrorOut
from services.runtime.errors import DocentError, error_info, unstorable_text

log = structlog.get_logger("docent.gateway")

_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# ErrorInfo reasons that pick a more precise HTTP status than their gRPC code
_BY_REASON: dict[str, int] = {
    "UNSUPPORTED_FILE_TYPE": 415,
    "FILE_TOO_LARGE": 413,
    "PAYLOAD_TOO_LARGE": 413,
}
_GENERIC = {500: "internal error", 503: "service unavailable", 504: "upstream deadline exceeded"}


@dataclass
class ApiError(Exception):
    """An HTTP error in the gateway's JSON shape."""

    status_code: int
    detail: str
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str = "") -> dict[str, object]:
        body: dict[str, object] = {"detail": self.detail}
        if self.reason:
            body["reason"] = self.reason
        if request_id and self.status_code >= 500:
            body["request_id"] = request_id
        return body

    def response(self, request_id: str = "") -> JSONResponse:
        return JSONResponse(self.body(request_id), status_code=self.status_code, headers=self.headers or None)


# OpenAPI: the error responses of the operations (`responses=error_responses(...)`), all with the ErrorOut body
# (422: ValidationErrorOut). tests/test_openapi.py checks that every error response of every route has one.
UNAUTHORIZED = "missing, invalid, expired or revoked token (TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED, TOKEN_REVOKED)"
INTERNAL = "an unexpected failure (INTERNAL); the body has the request id"
UPSTREAM_UNAVAILABLE = ("an upstream service or its backing store is not available (UPSTREAM_UNAVAILABLE, "
                        "LLM_UNAVAILABLE, ...); Retry-After says when to try again")
UPSTREAM_TIMEOUT = "the upstream service did not answer in time (DEADLINE_EXCEEDED)"
DATABASE_UNAVAILABLE = "the accounts database is not available (DATABASE_UNAVAILABLE)"
VALIDATION = "the parameters or the body do not match the schema (VALIDATION_ERROR); `detail` lists each problem"


def error_responses(errors: dict[int, str], validation: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with its description and the ErrorOut body; 422 with
    ValidationErrorOut when the route has parameters or a body."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorOut, "description": description} for status, description in sorted(errors.items())}
    if validation:
        responses[422] = {"model": ValidationErrorOut, "description": VALIDATION}
    return responses


def unauthorized(detail: str = "Not authenticated", reason: str = "UNAUTHENTICATED") -> ApiError:
    return ApiError(401, detail, reason, {"WWW-Authenticate": "Bearer"})


def from_rpc(error: grpc.RpcError) -> ApiError:
    """The HTTP error for a failed gRPC call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    info = error_info(error)
    reason = info.reason if info else ""
    metadata = dict(info.metadata) if info else {}
    status = _BY_REASON.get(reason) or _BY_CODE.get(code, 500)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and status == 429 and "limit_bytes" in metadata:
        status = 413
    message = (error.details() if hasattr(error, "details") else "") or ""
    headers: dict[str, str] = {}
    if status == 503 and not info and code == grpc.StatusCode.UNAVAILABLE:
        # no ErrorInfo: the service itself could not be reached (stopped, restarting); say which
        upstream = request_upstream()
        message = f"the {upstream or 'upstream'} service is unavailable (restarting?); try again shortly"
        reason = "UPSTREAM_UNAVAILABLE"
        headers["Retry-After"] = "2"
        log.warning("upstream_error", code=code.name, reason=reason, upstream=upstream, http_status=status)
        return ApiError(status, message, reason, headers)
    if status == 500 or (status in (503, 504) and not info):
        # no ErrorInfo: a transport failure (connection refused, deadline) whose text is not for users
        message = _GENERIC.get(status, "internal error")
    if not reason:
        reason = code.name if status != 500 else "INTERNAL"
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (429, 503) and metadata.get("retry_after_seconds"):
        headers["Retry-After"] = metadata["retry_after_seconds"]
    if status >= 500:
        log.warning("upstream_error", code=code.name, reason=reason, http_status=status)
    return ApiError(status, message or reason, reason, headers)


def error_event(error: ApiError) -> dict[str, object]:
    """The payload of an SSE `error` event (a stream cannot change its HTTP status once started)."""
    return {**error.body(), "status": error.status_code}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's body (`detail`: the list of problems) plus the `reason` every other error has
        return JSONResponse({"detail": jsonable_encoder(error.errors()), "reason": "VALIDATION_ERROR"},
                            status_code=422)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error.response(request_id())

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _rpc_error(_request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        return from_rpc(error).response(request_id())

    @app.exception_handler(DocentError)
    async def _docent_error(_request: Request, error: DocentError) -> JSONResponse:
        status = _BY_REASON.get(error.reason) or _BY_CODE.get(error.code, 500)
        api = ApiError(status, error.message if status < 500 else "internal error", error.reason)
        if status == 401:
            api.headers["WWW-Authenticate"] = "Bearer"
        return api.response(request_id())

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def _unstorable_text(_request: Request, error: Exception) -> JSONResponse:
        refused = unstorable_text(error)
        assert refused is not None
        return ApiError(400, refused.message, refused.reason).response(request_id())

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.TooManyConnectionsError)
    @app.exception_handler(asyncpg.exceptions.OperatorInterventionError)  # Postgres shutting down / recovering
    @app.exception_handler(ConnectionError)
    @app.exception_handler(FileNotFoundError)  # the embedded server's socket is gone while it restarts
    async def _database_down(_request: Request, error: Exception) -> JSONResponse:
        log.warning("database_unavailable", error=type(error).__name__)
        return ApiError(503, "accounts database is not available", "DATABASE_UNAVAILABLE").response(request_id())

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled_exception", exc_info=error)
        return ApiError(500, "internal error", "INTERNAL").response(request_id())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))
