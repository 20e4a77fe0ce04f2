"""Dramatiq middleware: a job carries the request that queued it, and the worker counts its jobs.

On enqueue (in the services, and in the worker for retries) the message's options get the caller's
`request_id` and, with tracing on, its W3C trace context (`trace_context`). In the worker, each message
binds that request id for its log lines and for the gRPC calls it makes (`x-request-id`), runs inside a
CONSUMER span that continues the enqueuer's trace, and is measured:

- `docent_jobs_total{queue,actor,outcome}`: messages processed (`processed`), that raised (`failed`; each
  failed attempt, retried or not) or that a middleware refused once started (`skipped`);
- `docent_job_retries_total{queue,actor}`: failed messages queued again for another attempt;
- `docent_job_seconds{queue,actor}`: processing time;
- `docent_job_queue_lag_seconds{queue,actor}`: from enqueue (or from the end of a retry's backoff) to the
  start of processing.

A Dramatiq worker runs several processes: `docent worker` points them at one prometheus_client
multiprocess directory (`job_metrics_dir`), which the worker metrics port (the sweeper's) serves.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from services.runtime import tracing
from services.runtime.call_context import current_request_id, request_id_var

JOBS = Counter("docent_jobs", "Dramatiq messages handled by the worker, by outcome (processed, failed)",
               ["queue", "actor", "outcome"])
JOB_RETRIES = Counter("docent_job_retries", "Failed Dramatiq messages queued again for another attempt",
                      ["queue", "actor"])
JOB_SECONDS = Histogram(
    "docent_job_seconds", "Time a worker spent on a Dramatiq message", ["queue", "actor"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
JOB_QUEUE_LAG = Histogram(
    "docent_job_queue_lag_seconds", "Enqueue (or end of retry backoff) → a worker starts the message",
    ["queue", "actor"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)

# the environment variable `docent worker` sets for its processes (services.worker reads it)
JOB_METRICS_DIR_ENV = "DOCENT_JOB_METRICS_DIR"


def job_metrics_dir(data_dir: Path) -> Path:
    """Where a data dir's worker processes keep their metrics (prometheus_client multiprocess files)."""
    return Path(data_dir) / "run" / "job-metrics"


def reset_job_metrics_dir(path: Path) -> Path:
    """An empty metrics directory for a worker starting up: the files of earlier runs are dropped."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


def queue_lag_seconds(message: Any, now_ms: float | None = None) -> float:
    """Seconds since the message became deliverable: enqueued, or its retry's delay (`eta`) ran out."""
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    ready_ms = max(float(message.message_timestamp or 0), float(message.options.get("eta") or 0))
    return max((now_ms - ready_ms) / 1000, 0.0)


@dataclass
class _Running:
    started: float
    labels: tuple[str, str]
    resets: list[Any] = field(default_factory=list)
    span: trace.Span | None = None
    attached: object = None


class JobContext(dramatiq.Middleware):
    """Request id and trace context into the message on enqueue; back out of it, plus metrics, in the worker."""

    def __init__(self) -> None:
        # one message at a time per worker thread
        self._local = threading.local()

    # -- enqueue side (services and worker alike)

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        options = message.options
        request_id = current_request_id()
        if request_id and "request_id" not in options:
            options["request_id"] = request_id
        if "trace_context" not in options:  # a retry keeps the trace of its first attempt
            carrier = tracing.inject()
            if carrier:
                options["trace_context"] = carrier

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        if message.options.get("retries"):  # the Retries middleware queued a failed message again
            JOB_RETRIES.labels(*_labels(message)).inc()

    # -- worker side

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        labels = _labels(message)
        JOB_QUEUE_LAG.labels(*labels).observe(queue_lag_seconds(message))
        running = _Running(time.perf_counter(), labels)
        request_id = str(message.options.get("request_id") or "")
        if request_id:
            running.resets.append(request_id_var.set(request_id))
        fields = {"job": message.actor_name, "message_id": message.message_id}
        if request_id:
            fields["request_id"] = request_id
        structlog.contextvars.bind_contextvars(**fields)
        if tracing.enabled():
            parent = tracing.extract(message.options.get("trace_context"))
            running.span = tracing.tracer().start_span(
                f"{message.actor_name} process", context=parent, kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "dramatiq", "messaging.operation": "process",
                            "messaging.destination.name": message.queue_name,
                            "messaging.message.id": message.message_id,
                            "docent.job.retries": int(message.options.get("retries") or 0),
                            **({"docent.request_id": request_id} if request_id else {})})
            running.attached = otel_context.attach(trace.set_span_in_context(running.span, parent))
        self._local.running = running

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message, *,
                              result: object = None, exception: BaseException | None = None) -> None:
        self._finish("failed" if exception is not None else "processed", exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self._finish("skipped", None)  # refused by a later middleware (e.g. too old) after we started it

    def _finish(self, outcome: str, exception: BaseException | None) -> None:
        running: _Running | None = getattr(self._local, "running", None)
        self._local.running = None
        if running is None:
            return
        JOB_SECONDS.labels(*running.labels).observe(time.perf_counter() - running.started)
        JOBS.labels(*running.labels, outcome).inc()
        if running.span is not None:
            if exception is not None:
                running.span.record_exception(exception)
                running.span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
            running.span.end()
        if running.attached is not None:
            otel_context.detach(running.attached)  # type: ignore[arg-type]
        structlog.contextvars.unbind_contextvars("job", "message_id", "request_id")
        for reset in reversed(running.resets):
            reset.var.reset(reset)


def _labels(message: dramatiq.Message) -> tuple[str, str]:
    # a delayed message sits in "<queue>.DQ"; count it under its queue
    return message.queue_name.removesuffix(".DQ"), message.actor_name
