"""gRPC server bootstrap shared by the ingest, retrieval and chat services.

`serve()` listens at once with the standard health service (NOT_SERVING until the service is
built and its dependencies answer, NOT_SERVING again on shutdown), server reflection, and the
chained interceptors of services.runtime.interceptors. It then builds the service through its
factory (a model load or a database connection can take seconds) and routes calls to it; until
then its methods answer UNAVAILABLE / SERVICE_STARTING. SIGTERM/SIGINT shut it down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.runtime import metrics, tracing
from services.runtime.api_keys import ApiKeyDirectory
from services.runtime.config import Settings
from services.runtime.errors import Unavailable
from services.runtime.interceptors import Authentication, ErrorMapping, RequestScope, RevocationChecker
from services.runtime.names import MAX_MESSAGE_BYTES
from services.runtime.revocation import RevocationList

log = structlog.get_logger("docent.grpc")

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


class Service(Protocol):
    """A service built whole by its factory: servicers with every dependency they use."""

    def register(self, server: Any) -> None:
        """Add the servicers, e.g. `chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)`."""

    async def check_ready(self) -> bool: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class ServiceDefinition:
    """What `serve()` runs: a name for logs and metrics, the gRPC services it will answer, and the
    factory that builds it."""

    name: str
    service_names: Sequence[str]
    build: Callable[[], Awaitable[Service]]
    # refuses tokens ended by a logout (the gateway publishes them through Redis)
    checks_revocation: bool = False
    # a service users call directly: also accepts API keys (published by the gateway through Redis)
    accepts_api_keys: bool = False


class _Routes(grpc.GenericRpcHandler):
    """Routes calls to the service once it is built; before that its methods answer
    UNAVAILABLE / SERVICE_STARTING (health and reflection are served throughout)."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in service_names)
        self._handlers: tuple[grpc.GenericRpcHandler, ...] | None = None
        self._collected: list[grpc.GenericRpcHandler] = []

    # the two methods the generated add_*Servicer_to_server functions call
    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._collected.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, Any]) -> None:
        """The generic handlers added alongside already route these methods."""

    def install(self, service: Service) -> None:
        service.register(self)
        self._handlers = tuple(self._collected)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if self._handlers is None:
            return _STARTING if details.method.startswith(self._prefixes) else None
        for handler in self._handlers:
            found = handler.service(details)
            if found is not None:
                return found
        return None


async def _answer_starting(request: Any, context: grpc.aio.ServicerContext) -> None:
    raise Unavailable("service is starting", reason="SERVICE_STARTING")


# stream-stream with raw bytes: answers any method kind without reading a request
_STARTING = grpc.stream_stream_rpc_method_handler(_answer_starting)


async def serve(definition: ServiceDefinition, settings: Settings, *, port: int, jwt_secret: str,
                metrics_port: int = 0, ready_interval: float = 2.0,
                on_bound: Callable[[int], None] | None = None,
                stop_event: asyncio.Event | None = None,
                revocations: RevocationChecker | None = None) -> None:
    """Build and run `definition` until SIGTERM/SIGINT (or `stop_event`), then shut down gracefully.

    `revocations` overrides the Redis revocation list of a service that checks revocation (tests)."""
    tracing.configure_tracing(definition.name)  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    owned_revocations = None
    # revocations and API keys are published through Redis by the gateway: without Redis there are none
    if definition.checks_revocation and revocations is None and settings.redis_url:
        revocations = owned_revocations = RevocationList(settings.redis_url)
    api_keys = ApiKeyDirectory(settings.redis_url) if definition.accepts_api_keys and settings.redis_url else None
    routes = _Routes(definition.service_names)
    server = grpc.aio.server(
        # tracing first (when on): the span is active for the request scope's log line
        interceptors=[*tracing.server_interceptors(), RequestScope(definition.name), ErrorMapping(),
                      Authentication(jwt_secret, revocations if definition.checks_revocation else None,
                                     api_keys)],
        options=SERVER_OPTIONS,
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_generic_rpc_handlers((routes,))
    reflection.enable_server_reflection(
        [*definition.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )
    bound_port = server.add_insecure_port(f"{settings.bind_host}:{port}")
    if not bound_port:
        raise SystemExit(f"docent: {definition.name}: cannot listen on {settings.bind_host}:{port}")
    if metrics_port:
        metrics.start_metrics_server(metrics_port, settings.bind_host)

    async def set_all(status: int) -> None:
        for name in ("", *definition.service_names):
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

    service: Service | None = None

    async def watch_readiness(built: Service) -> None:
        serving: bool | None = None
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the watcher's cancellation
                async with asyncio.timeout(max(ready_interval, 1.0) * 2):
                    ok = await built.check_ready()
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
        build_task = asyncio.ensure_future(definition.build())
        stop_task = asyncio.ensure_future(stop.wait())
        await asyncio.wait({build_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if build_task.done():
            service = build_task.result()  # a start-up failure stops the service with its message
            routes.install(service)
            watcher = asyncio.create_task(watch_readiness(service))
            await stop_task
        else:
            build_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await build_task
    finally:
        log.info("shutting_down", grace_seconds=settings.grpc_grace_seconds)
        await health.enter_graceful_shutdown()
        if watcher:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await server.stop(settings.grpc_grace_seconds)
        if service is not None:
            await service.close()
        if owned_revocations is not None:
            await owned_revocations.close()
        if api_keys is not None:
            await api_keys.close()
        log.info("stopped")
