"""OpenTelemetry tracing: off by default, on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

`configure_tracing(role)` is called by each process at start-up (gateway, the gRPC services' `serve()`,
the Dramatiq worker processes, the sweeper). With no endpoint it does nothing and every helper here is a
no-op: no interceptor is chained, no middleware installed. With one, spans go to the OTLP endpoint in
batches (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` by default; `grpc` needs
opentelemetry-exporter-otlp-proto-grpc installed). The SDK reads the other standard variables itself:
`OTEL_SERVICE_NAME` (default `docent-<role>`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` /
`OTEL_TRACES_SAMPLER_ARG`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`; `OTEL_SDK_DISABLED=true` keeps it off.

One trace follows a request across processes: the W3C `traceparent` travels in gRPC metadata (the client
and server interceptors below) and in the Dramatiq message's options (services.runtime.jobs).

Why our own gRPC interceptors rather than opentelemetry-instrumentation-grpc: its aio server interceptor
wraps every response-streaming handler as an async generator (`async for` over the behaviour), which breaks
handlers that stream with `context.write()` (the health Watch) and the coroutine `_STARTING` handler of
services.runtime.grpc_server, and it learns a failed RPC's code only from `context.abort()`, while
`ErrorMapping` ends calls with `abort_with_status()`. `ServerTracing` is a `ScopedInterceptor` like the
others, first in the chain so the canonical `rpc` log line carries the span's ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime.interceptors import PUBLIC_METHOD_PREFIXES, ScopedInterceptor

log = structlog.get_logger("docent.tracing")

TRACER_NAME = "docent"
_provider: Any = None


def enabled() -> bool:
    return _provider is not None


def configure_tracing(role: str, *, exporter: Any = None) -> bool:
    """Install the SDK tracer provider for this process if tracing is asked for; True when it is on.

    `exporter` (tests: the SDK's InMemorySpanExporter) turns it on without an endpoint, exporting each span
    as it ends. Idempotent: the first call of a process decides (several services in one test process
    share one provider)."""
    global _provider
    if _provider is not None:
        return True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter is None and not endpoint:
        return False

    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over our default name
    named = SERVICE_NAME in OTELResourceDetector().detect().attributes
    resource = Resource.create({} if named else {SERVICE_NAME: f"docent-{role}"})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # the global one can be set once
        trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing_enabled", service_name=resource.attributes.get(SERVICE_NAME), endpoint=endpoint or None)
    return True


def _otlp_exporter() -> Any:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            return OTLPSpanExporter()
        except ImportError:
            log.warning("otlp_grpc_exporter_missing", fallback="http/protobuf",
                        hint="pip install opentelemetry-exporter-otlp-proto-grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    return HttpExporter()


def shutdown_tracing() -> None:
    """Flush and stop the provider (process exit; tests). Spans started afterwards are dropped."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def tracer() -> trace.Tracer:
    return _provider.get_tracer(TRACER_NAME) if _provider is not None else trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """A span around a block of work (a pipeline stage, a vector search, an LLM call), child of the active
    one; a no-op span when tracing is off. An exception escaping the block marks the span as an error."""
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    values = {key: value for key, value in (attributes or {}).items() if value is not None}
    with tracer().start_as_current_span(name, attributes=values) as current:
        yield current


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> trace.Span:
    """A span, child of the active one, that the caller ends (`span.end()`) and that is not made current:
    for an async generator, whose consumer runs between its yields. A no-op span when tracing is off."""
    if _provider is None:
        return trace.INVALID_SPAN
    values = {key: value for key, value in (attributes or {}).items() if value is not None}
    return tracer().start_span(name, attributes=values)


def inject(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, …); empty when tracing is off or no span
    is active."""
    carrier = {} if carrier is None else carrier
    if _provider is not None:
        propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(carrier or {}))


# ---------------------------------------------------------------------------------------------- gRPC

def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _traced(method: str) -> bool:
    return not method.startswith(PUBLIC_METHOD_PREFIXES)  # health checks and reflection: no spans


class ServerTracing(ScopedInterceptor):
    """A SERVER span per RPC, child of the caller's span (its `traceparent` metadata)."""

    def applies_to(self, method: str) -> bool:
        return _traced(method)

    @contextlib.asynccontextmanager
    async def scope(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[trace.Span]:
        metadata = dict(context.invocation_metadata() or ())
        attributes: dict[str, Any] = _rpc_attributes(method)
        if metadata.get("x-request-id"):
            attributes["docent.request_id"] = str(metadata["x-request-id"])
        with tracer().start_as_current_span(method.lstrip("/"), context=extract(metadata), kind=SpanKind.SERVER,
                                            attributes=attributes, record_exception=False,
                                            set_status_on_exception=False) as current:
            try:
                yield current
            except (asyncio.CancelledError, GeneratorExit):  # the caller went away
                current.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
                raise
            except BaseException as error:
                code = context.code() if isinstance(error, grpc.aio.AbortError) else grpc.StatusCode.UNKNOWN
                _set_grpc_status(current, code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
                                 server=True)
                raise
            else:
                _set_grpc_status(current, grpc.StatusCode.OK, server=True)


def _set_grpc_status(current: trace.Span, code: grpc.StatusCode, *, server: bool) -> None:
    current.set_attribute("rpc.grpc.status_code", code.value[0])
    # server spans: only server-side faults are errors (semantic conventions)
    failed = code != grpc.StatusCode.OK and (not server or code in _SERVER_ERRORS)
    if failed:
        current.set_status(Status(StatusCode.ERROR, code.name))


_SERVER_ERRORS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                  grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """To put first in a server's chain: [] when tracing is off."""
    return [ServerTracing()] if _provider is not None else []


class _ClientTracing:
    """A CLIENT span per outgoing call, its context injected into the call's metadata. Unary responses
    end the span when they arrive; streamed ones when the call ends (a small task awaits its status).
    One subclass per call kind: a grpc.aio channel files each interceptor under the first kind it matches."""

    def __init__(self) -> None:
        self._watchers: set[asyncio.Task[None]] = set()

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[trace.Span | None, grpc.aio.ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        if _provider is None or not _traced(method):
            return None, details
        current = tracer().start_span(method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_rpc_attributes(method))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(current))
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()), *carrier.items())
        return current, details._replace(metadata=metadata)

    async def _unary_response(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        current, details = self._start(details)
        call = await continuation(details, request)
        if current is None:
            return call
        try:
            await call
        except grpc.aio.AioRpcError as error:
            _set_grpc_status(current, error.code(), server=False)
            raise
        except asyncio.CancelledError:
            current.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
            raise
        else:
            _set_grpc_status(current, grpc.StatusCode.OK, server=False)
        finally:
            current.end()
        return call

    async def _streamed_response(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        current, details = self._start(details)
        call = await continuation(details, request)
        if current is not None:
            watcher = asyncio.ensure_future(self._end_when_done(current, call))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
        return call

    @staticmethod
    async def _end_when_done(current: trace.Span, call: Any) -> None:
        try:
            code = await call.code()
        except BaseException:
            code = grpc.StatusCode.CANCELLED
        _set_grpc_status(current, code, server=False)
        current.end()


class _UnaryUnary(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[override]
        return await self._unary_response(continuation, client_call_details, request)


class _StreamUnary(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return await self._unary_response(continuation, client_call_details, request_iterator)


class _UnaryStream(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[override]
        return await self._streamed_response(continuation, client_call_details, request)


class _StreamStream(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[override]
        return await self._streamed_response(continuation, client_call_details, request_iterator)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """For `grpc.aio.insecure_channel(..., interceptors=...)`: [] when tracing is off."""
    if _provider is None:
        return []
    return [_UnaryUnary(), _StreamUnary(), _UnaryStream(), _StreamStream()]


# ------------------------------------------------------------------------------------------- gateway

def instrument_fastapi(app: Any) -> None:
    """A SERVER span per REST request (opentelemetry-instrumentation-fastapi: the outermost middleware,
    named by route), when tracing is on. The probes and /metrics get none."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider, excluded_urls="/health,/ready,/metrics",
                                       exclude_spans=["receive", "send"])
