"""Pure ASGI middleware (no per-request task, streaming-safe): request id + metrics + access log,
and the upload size limit enforced before the body is parsed."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import structlog
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.request_context import reset_request_id, set_request_id

log = structlog.get_logger("docent.gateway")

HTTP_REQUESTS = Counter("docent_http_requests_total", "REST requests served", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "docent_http_request_seconds", "REST request duration (until the response starts)", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# multipart framing around the file: boundaries, part headers, a filename
MULTIPART_SLACK_BYTES = 64 * 1024
# an oversize body is read and dropped up to this much, so that the client gets to read the 413
DRAIN_CAP_BYTES = 256 * 1024 * 1024
_QUIET_ROUTES = {"/health", "/ready", "/metrics"}


class RequestContextMiddleware:
    """X-Request-ID in and out (forwarded to the gRPC services), one metric sample per request, and one
    log line per API request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = set_request_id(rid, scope.get("path", ""))
        structlog.contextvars.bind_contextvars(request_id=rid)
        trace.get_current_span().set_attribute("docent.request_id", rid)  # the REST span, when tracing is on
        started = time.perf_counter()
        status = 500
        observed = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, observed
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
                if not observed:
                    observed = True
                    HTTP_LATENCY.labels(scope["method"], _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route(scope)
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            if route.startswith("/api/"):
                log.info("http", method=scope["method"], route=route, status=status,
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))
            structlog.contextvars.unbind_contextvars("request_id")
            reset_request_id(token)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    return path or "/static"


class UploadLimitMiddleware:
    """413 for uploads over the limit: at once from Content-Length, or as soon as a body without one
    (chunked) passes it — before the multipart parser has spooled the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...] = ("/api/upload", "/api/upload/")) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit = max_bytes + MULTIPART_SLACK_BYTES
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._drain(receive)
            await self._reject(send)
            return
        seen = 0
        overflow = False
        finished = False
        responded = False

        async def counting_receive() -> Message:
            nonlocal seen, overflow, finished
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if seen > self.limit:
                    overflow = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal responded
            if overflow:
                # whatever the app made of the aborted body, the answer is 413
                if not responded:
                    responded = True
                    await self._reject(send)
                return
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not responded:
                if not finished:
                    await self._drain(receive)
                await self._reject(send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the rest of the body (up to a cap): a client still sending when the server answers
        and closes sees a reset connection instead of the 413."""
        drained = 0
        while drained < DRAIN_CAP_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": f"file is larger than the {self.max_bytes} byte limit",
                           "reason": "FILE_TOO_LARGE"}).encode()
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                              (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
