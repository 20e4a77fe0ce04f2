"""gRPC server bootstrap shared by the ingest, retrieval and chat services.

`serve()` builds a grpc.aio server with the standard health service (NOT_SERVING until the
service's dependencies answer, NOT_SERVING again on shutdown), server reflection, the
interceptor below (request id, auth, error mapping, one log line and metrics per RPC) and
graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.runtime import metrics
from services.runtime.auth import Identity, bearer_token, verify_token
from services.runtime.config import Settings
from services.runtime.errors import DocentError, Unauthenticated, Unavailable, backing_outage, build_status

log = structlog.get_logger("docent.grpc")

PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Clients re-resolve DNS only when a connection ends: recycling connections lets pods added by a
    # scale-up receive traffic. The long grace lets streams (WatchDocument, StreamChat) finish.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 3_600_000),
]

_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("docent_identity", default=None)
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("docent_request_id", default="")
_token: contextvars.ContextVar[str] = contextvars.ContextVar("docent_token", default="")
# monotonic time at which the RPC being served expires (its caller's deadline), if it has one
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("docent_deadline", default=None)


def current_identity() -> Identity:
    """The authenticated caller of the RPC being served."""
    identity = _identity.get()
    if identity is None:
        raise Unauthenticated("missing bearer token", reason="TOKEN_MISSING")
    return identity


def current_user_id() -> str:
    return current_identity().user_id


def current_request_id() -> str:
    return _request_id.get()


def current_token() -> str:
    """The caller's bearer token, to call another service on the caller's behalf."""
    return _token.get()


def remaining_seconds(limit: float) -> float:
    """`limit`, or less if the RPC being served must be answered sooner: a call made on its behalf
    (to another service, to the LLM) never outlives the user request's one deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return limit
    return max(min(limit, deadline - time.monotonic()), 0.001)


class ServiceApp(Protocol):
    """What a service plugs into `serve()`."""

    name: str
    service_names: Sequence[str]

    async def start(self) -> None: ...
    def register(self, server: grpc.aio.Server) -> None: ...
    async def check_ready(self) -> bool: ...
    async def close(self) -> None: ...


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, jwt_secret: str, is_started: Callable[[], bool],
                 is_revoked: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._service = service
        self._secret = jwt_secret
        self._is_started = is_started
        # apps with a database answer it (ingest, chat); retrieval is internal and has none
        self._is_revoked = is_revoked

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        public = method.startswith(PUBLIC_METHOD_PREFIXES)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, public),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, public),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, public),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, public),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, behavior: Callable[..., Any], method: str, public: bool) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self, method, public, context)
            try:
                await call.enter()
                return await behavior(request, context)
            except BaseException as error:
                await call.fail(error)
                raise
            finally:
                call.finish()

        return wrapper

    def _wrap_stream(self, behavior: Callable[..., Any], method: str, public: bool) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            # a coroutine that streams with context.write() (e.g. the health Watch)
            return self._wrap_unary(behavior, method, public)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self, method, public, context)
            try:
                await call.enter()
                async for response in behavior(request, context):
                    call.messages_sent += 1
                    yield response
            except BaseException as error:
                await call.fail(error)
                raise
            finally:
                call.finish()

        return wrapper


class _Call:
    """The per-RPC scope: identity, request id, outcome, the canonical log line and metrics."""

    def __init__(self, interceptor: ServiceInterceptor, method: str, public: bool,
                 context: grpc.aio.ServicerContext) -> None:
        self.interceptor = interceptor
        self.method = method
        self.public = public
        self.context = context
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.reason = ""
        self.messages_sent = 0
        self._tokens: list[contextvars.Token[Any]] = []
        self._metadata = {key: value for key, value in (context.invocation_metadata() or ())}

    async def enter(self) -> None:
        request_id = str(self._metadata.get("x-request-id") or uuid.uuid4().hex)
        self._tokens.append(_request_id.set(request_id))
        remaining = self.context.time_remaining()
        if remaining is not None:
            self._tokens.append(_deadline.set(time.monotonic() + remaining))
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=self.method)
        if self.public:
            return
        if not self.interceptor._is_started():
            raise Unavailable("service is starting", reason="SERVICE_STARTING")
        token = bearer_token(self._metadata.get("authorization"))
        identity = verify_token(self.interceptor._secret, token)
        is_revoked = self.interceptor._is_revoked
        if is_revoked is not None and identity.token_id and await is_revoked(identity.token_id):
            raise Unauthenticated("the token has been revoked (logged out)", reason="TOKEN_REVOKED")
        self._tokens.append(_identity.set(identity))
        self._tokens.append(_token.set(token))
        structlog.contextvars.bind_contextvars(user_id=identity.user_id)

    async def fail(self, error: BaseException) -> None:
        context = self.context
        if isinstance(error, DocentError):
            self.code, self.reason = error.code, error.reason
            await context.abort_with_status(error.to_status())
        if isinstance(error, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            return
        if isinstance(error, grpc.aio.AbortError):
            # the servicer aborted on its own; keep its code
            code = context.code()
            self.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            return
        if isinstance(error, (GeneratorExit, KeyboardInterrupt, SystemExit)):
            return
        outage = backing_outage(error)
        if outage is not None:
            self.code, self.reason = outage.code, outage.reason
            log.warning("backing_service_unavailable", reason=outage.reason, error=type(error).__name__)
            await context.abort_with_status(outage.to_status())
        if isinstance(error, NotImplementedError):
            self.code, self.reason = grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED"
            await context.abort_with_status(
                build_status(grpc.StatusCode.UNIMPLEMENTED, f"{self.method} is not implemented yet",
                             "NOT_IMPLEMENTED")
            )
        self.code, self.reason = grpc.StatusCode.INTERNAL, "INTERNAL"
        log.error("rpc_unhandled_exception", exc_info=error)
        await context.abort_with_status(
            build_status(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL",
                         {"request_id": _request_id.get()})
        )

    def finish(self) -> None:
        duration = time.perf_counter() - self.started
        service = self.interceptor._service
        code_name = self.code.name
        metrics.GRPC_REQUESTS.labels(service, self.method, code_name).inc()
        metrics.GRPC_LATENCY.labels(service, self.method).observe(duration)
        if not self.method.startswith("/grpc.health.v1.Health/"):
            fields: dict[str, Any] = {"code": code_name, "duration_ms": round(duration * 1000, 2)}
            if self.reason:
                fields["reason"] = self.reason
            if self.messages_sent:
                fields["messages_sent"] = self.messages_sent
            level = log.warning if self.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) else log.info
            level("rpc", **fields)
        structlog.contextvars.unbind_contextvars("request_id", "rpc", "user_id")
        for token in reversed(self._tokens):
            token.var.reset(token)
        self._tokens.clear()


async def serve(app: ServiceApp, settings: Settings, *, port: int, jwt_secret: str,
                metrics_port: int = 0, ready_interval: float = 2.0,
                on_bound: Callable[[int], None] | None = None,
                stop_event: asyncio.Event | None = None) -> None:
    """Run `app` until SIGTERM/SIGINT (or `stop_event`), then shut down gracefully."""
    started = False
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(app.name, jwt_secret, lambda: started,
                                         getattr(app, "is_token_revoked", None))],
        options=SERVER_OPTIONS,
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    app.register(server)
    reflection.enable_server_reflection(
        [*app.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )
    bound_port = server.add_insecure_port(f"{settings.bind_host}:{port}")
    if not bound_port:
        raise SystemExit(f"docent: {app.name}: cannot listen on {settings.bind_host}:{port}")
    if metrics_port:
        metrics.start_metrics_server(metrics_port, settings.bind_host)

    async def set_all(status: int) -> None:
        for name in ("", *app.service_names):
            await health.set(name, status)

    await set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    log.info("grpc_listening", address=f"{settings.bind_host}:{bound_port}", metrics_port=metrics_port or None)
    if on_bound:
        on_bound(bound_port)

    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (in-process tests): the caller sets stop_event

    async def watch_readiness() -> None:
        serving: bool | None = None
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the watcher's cancellation
                async with asyncio.timeout(max(ready_interval, 1.0) * 2):
                    ok = await app.check_ready()
            except Exception as error:  # a failing dependency check means NOT_SERVING, not a crash
                log.warning("readiness_check_failed", error=type(error).__name__)
                ok = False
            if ok != serving:
                serving = ok
                await set_all(health_pb2.HealthCheckResponse.SERVING if ok
                              else health_pb2.HealthCheckResponse.NOT_SERVING)
                log.info("health", status="SERVING" if ok else "NOT_SERVING")
            await asyncio.sleep(ready_interval)

    watcher: asyncio.Task[None] | None = None
    try:
        start_task = asyncio.ensure_future(app.start())
        stop_task = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if start_task.done():
            start_task.result()  # a start-up failure stops the service with its message
            started = True
            watcher = asyncio.create_task(watch_readiness())
            await stop_task
        else:
            start_task.cancel()
    finally:
        log.info("shutting_down", grace_seconds=settings.grpc_grace_seconds)
        await health.enter_graceful_shutdown()
        if watcher:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await server.stop(settings.grpc_grace_seconds)
        await app.close()
        log.info("stopped")
