"""structlog set-up shared by every process: JSON lines when not on a TTY, console otherwise.

Request-scoped fields (request_id, user_id, rpc) are bound with structlog.contextvars by the
gRPC interceptor, the gateway middleware and the worker's job middleware, so every line a request logs
carries them; with tracing on, lines logged inside a span carry its trace_id and span_id.
"""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace


def add_trace_ids(_logger: object, _method: str, event: dict) -> dict:
    """`trace_id` and `span_id` of the active OpenTelemetry span, when there is one (tracing on:
    services.runtime.tracing), so a log line can be found from its trace and back."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event.setdefault("trace_id", format(span_context.trace_id, "032x"))
        event.setdefault("span_id", format(span_context.span_id, "016x"))
    return event


def configure_logging(level: str = "info", fmt: str = "auto", service: str | None = None) -> None:
    """structlog for our code and, through the same processors and renderer, every stdlib logger
    (uvicorn, dramatiq, asyncpg, grpc): in JSON mode every line of a process is one JSON object with
    its service, level, logger name and the request id bound at the time."""
    numeric_level = getattr(logging, level.upper(), logging.INFO)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())

    def add_service(_logger: object, _method: str, event: dict) -> dict:
        if service:
            event.setdefault("service", service)
        return event

    shared: list[structlog.types.Processor] = [
        add_service,
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through stdlib logging: one handler on the root logger renders their records like
    # ours (at least INFO: their DEBUG output is not ours to turn on).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric_level, logging.INFO))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name) if name else structlog.get_logger()
