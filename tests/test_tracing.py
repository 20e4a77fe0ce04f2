"""Observability across the queue: one trace follows an upload from its REST call through the ingest service
and the Dramatiq message into the worker's stages and the retrieval upsert; the worker's jobs carry the request
id and are counted; the LLM client measures its calls.

Real parts, in this process so the SDK's in-memory exporter sees every span: the gateway under uvicorn, the
ingest and retrieval gRPC servers on loopback, the session's embedded Postgres and Redis, and a Dramatiq
worker running the real `process_document` actor with the worker's middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import dramatiq
import httpx
import openai
import pytest
import structlog
from dramatiq.middleware import AsyncIO, CurrentMessage, default_middleware
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from docent.v1 import retrieval_pb2
from services.chat.answer_llm import LLMClient
from services.runtime import tracing
from services.runtime.call_context import request_id_var
from services.runtime.jobs import JobContext, queue_lag_seconds
from services.runtime.logging import add_trace_ids
from services.runtime.queue import INGEST_QUEUE, create_broker
from tests.conftest import REPO, TEST_SECRET, auth, create_database, make_settings
from tests.ingest_harness import ingest_stack
from tests.test_gateway_auth import serve_gateway

TEXT = "\n\n".join(f"Section {n}. The observatory logs star {n} at magnitude {n % 7}." for n in range(40))


@pytest.fixture(scope="module")
def spans():
    """Tracing on for this module's services, into memory; off again afterwards."""
    tracing.shutdown_tracing()
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


@contextlib.asynccontextmanager
async def gateway(settings) -> AsyncIterator[str]:
    """The gateway as `docent serve gateway` builds it (services.gateway.main), on a free port."""
    from services.gateway.app import create_app

    app = create_app(settings, TEST_SECRET)
    tracing.instrument_fastapi(app)
    async with serve_gateway(settings, app) as url:
        yield url


@contextlib.contextmanager
def worker(settings):
    """A Dramatiq worker on the `ingest` queue with the middleware of services.worker, running the real actor."""
    from dramatiq.asyncio import get_event_loop_thread

    from services.ingest import actors
    from services.runtime.resources import WorkerResources

    broker = create_broker(settings.redis_url,
                           middleware=[m() for m in default_middleware] + [AsyncIO(), CurrentMessage(), JobContext()])
    actor = actors.process_document
    previous = actor.broker
    actor.broker = broker
    broker.declare_actor(actor)
    running = dramatiq.Worker(broker, queues={INGEST_QUEUE}, worker_threads=1, worker_timeout=100)
    running.start()
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None
    loop_thread.run_coroutine(WorkerResources.configure(settings))
    try:
        yield
    finally:
        # A loop that already stopped took the resources' connections with it; raising here would only
        # hide the failure the test itself reports.
        if loop_thread.loop.is_running():
            loop_thread.run_coroutine(WorkerResources.reset())
        running.stop()
        broker.close()
        actor.broker = previous


def by_name(finished, name: str, kind: SpanKind | None = None):
    found = [s for s in finished if s.name == name and (kind is None or s.kind == kind)]
    assert found, f"no span {name!r} ({kind}); have {sorted({s.name for s in finished})}"
    return found


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_one_trace_links_an_upload_to_its_worker_stages_and_the_retrieval_upsert(
        backing, embedder, spans) -> None:
    database_url = await create_database(backing.database_url)
    settings = make_settings(backing, database_url=database_url)
    processed_before = counter("docent_jobs_total", queue="ingest", actor="process_document", outcome="processed")
    lag_before = counter("docent_job_queue_lag_seconds_count", queue="ingest", actor="process_document")

    async with ingest_stack(settings, embedder) as stack:
        settings = stack.settings.model_copy(update={"ingest_target": stack.ingest_target})
        with worker(settings):
            async with gateway(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
                reply = await client.post("/api/auth/signup", json={
                    "email": f"t-{uuid.uuid4().hex[:10]}@example.com", "username": "tracer",
                    "password": "password-123"})
                assert reply.status_code == 201, reply.text
                headers = {"Authorization": f"Bearer {reply.json()['access_token']}"}
                user_id = reply.json()["user"]["id"]
                request_id = "trace-" + uuid.uuid4().hex[:12]
                reply = await client.post("/api/upload/", headers={**headers, "X-Request-ID": request_id},
                                          files={"file": ("stars.txt", TEXT.encode(), "text/plain")})
                assert reply.status_code == 202, reply.text
                document_id = reply.json()["id"]
                deadline = time.monotonic() + 30
                while True:
                    status = (await client.get(f"/api/upload/{document_id}/status", headers=headers)).json()
                    if status.get("status") in ("completed", "failed") or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                assert status["status"] == "completed", status
                # a server-streaming call (WatchDocument behind the SSE route) is traced too
                async with client.stream("GET", f"/api/upload/{document_id}/events", headers=headers) as events:
                    assert events.status_code == 200
                    assert "event: done" in "".join([line async for line in events.aiter_lines()])
                found = await stack.retrieval.Search(retrieval_pb2.SearchRequest(query="Which star has magnitude 3?"),
                                                     metadata=auth(user_id), timeout=30)
                assert found.results
            # the worker's span ends when its middleware sees the message done, just after the status changed
            while not [s for s in spans.get_finished_spans() if s.name == "process_document process"]:
                assert time.monotonic() < deadline + 10, "the worker's span never ended"
                await asyncio.sleep(0.05)

    finished = spans.get_finished_spans()
    rest = [s for s in by_name(finished, "POST /api/upload/", SpanKind.SERVER)]
    assert len(rest) == 1
    trace_id = rest[0].context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]

    def one(name: str, kind: SpanKind | None = None):
        found = by_name(in_trace, name, kind)
        return found[0]

    upload_client = one("docent.v1.IngestService/UploadDocument", SpanKind.CLIENT)
    upload_server = one("docent.v1.IngestService/UploadDocument", SpanKind.SERVER)
    job = one("process_document process", SpanKind.CONSUMER)
    parse = one("ingest.parse_chunk")
    embeds = by_name(in_trace, "ingest.embed")
    indexes = by_name(in_trace, "ingest.index")
    upsert_clients = by_name(in_trace, "docent.v1.RetrievalService/UpsertChunks", SpanKind.CLIENT)
    upsert_servers = by_name(in_trace, "docent.v1.RetrievalService/UpsertChunks", SpanKind.SERVER)

    # REST → gRPC client → ingest server → (Redis, Dramatiq message) → worker → stages → retrieval
    assert upload_client.parent.span_id == rest[0].context.span_id
    assert upload_server.parent.span_id == upload_client.context.span_id
    assert job.parent.span_id == upload_server.context.span_id
    assert job.attributes["messaging.destination.name"] == "ingest"
    assert job.attributes["docent.request_id"] == request_id
    # the request id is on the REST span and travels with the calls (x-request-id)
    assert rest[0].attributes["docent.request_id"] == upload_server.attributes["docent.request_id"] == request_id
    assert all(span.attributes["docent.request_id"] == request_id for span in upsert_servers)
    assert parse.parent.span_id == job.context.span_id and parse.attributes["docent.chunks"] > 0
    assert all(span.parent.span_id == job.context.span_id for span in [*embeds, *indexes])
    assert {span.parent.span_id for span in upsert_clients} <= {span.context.span_id for span in indexes}
    assert {span.parent.span_id for span in upsert_servers} == {span.context.span_id for span in upsert_clients}
    assert all(span.attributes["rpc.grpc.status_code"] == 0 for span in [*upsert_clients, *upsert_servers])
    watch_client = by_name(finished, "docent.v1.IngestService/WatchDocument", SpanKind.CLIENT)[0]
    watch_server = by_name(finished, "docent.v1.IngestService/WatchDocument", SpanKind.SERVER)[0]
    assert watch_server.parent.span_id == watch_client.context.span_id
    assert watch_client.attributes["rpc.grpc.status_code"] == 0
    search = by_name(finished, "docent.v1.RetrievalService/Search", SpanKind.SERVER)[0]
    assert {span.parent.span_id for span in by_name(finished, "retrieval.vector_search")} == {search.context.span_id}
    assert by_name(finished, "retrieval.embed_query")[0].parent.span_id == search.context.span_id
    # health checks (readiness polling) make no spans
    assert not [s for s in finished if "grpc.health" in s.name]

    # the worker counted the job and how long it waited in the queue
    assert counter("docent_jobs_total", queue="ingest", actor="process_document",
                   outcome="processed") >= processed_before + 1
    assert counter("docent_job_queue_lag_seconds_count", queue="ingest", actor="process_document") >= lag_before + 1


def test_a_job_binds_the_request_id_and_continues_the_trace_in_its_log_lines(spans) -> None:
    middleware = JobContext()
    broker = dramatiq.get_broker()
    with tracing.tracer().start_as_current_span("enqueuer") as enqueuer:
        token = request_id_var.set("req-42")
        try:
            message = dramatiq.Message(queue_name="ingest", actor_name="process_document", args=("d",), kwargs={},
                                       options={})
            middleware.before_enqueue(broker, message, None)
        finally:
            request_id_var.reset(token)
    assert message.options["request_id"] == "req-42"
    assert message.options["trace_context"]["traceparent"].split("-")[1] == format(
        enqueuer.get_span_context().trace_id, "032x")

    middleware.before_process_message(broker, message)
    try:
        assert request_id_var.get() == "req-42"
        line = add_trace_ids(None, "info", dict(structlog.contextvars.get_contextvars()))
        assert line["request_id"] == "req-42" and line["job"] == "process_document"
        assert line["trace_id"] == format(enqueuer.get_span_context().trace_id, "032x")
        assert line["span_id"] == format(trace.get_current_span().get_span_context().span_id, "016x")
    finally:
        middleware.after_process_message(broker, message, exception=RuntimeError("boom"))
    assert request_id_var.get() == ""
    assert "request_id" not in structlog.contextvars.get_contextvars()
    assert not trace.get_current_span().get_span_context().is_valid
    failed = spans.get_finished_spans()[-1]
    assert failed.name == "process_document process" and not failed.status.is_ok


def test_queue_lag_counts_from_enqueue_or_the_end_of_a_retry_backoff() -> None:
    message = dramatiq.Message(queue_name="ingest", actor_name="a", args=(), kwargs={}, options={},
                               message_timestamp=1_000_000)
    assert queue_lag_seconds(message, now_ms=1_002_500) == 2.5
    delayed = message.copy(options={"eta": 1_002_000})
    assert queue_lag_seconds(delayed, now_ms=1_002_500) == 0.5


def _llm(handler) -> LLMClient:
    client = openai.AsyncOpenAI(base_url="http://llm.test/v1", api_key="k", max_retries=0,
                                http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    return LLMClient(client, "test-model")


async def test_llm_calls_are_measured_latency_tokens_and_errors_by_reason() -> None:
    def streamed(request: httpx.Request) -> httpx.Response:
        chunks = [
            {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
            {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}},
        ]
        body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

    before = {kind: counter("docent_llm_tokens_total", kind=kind) for kind in ("prompt", "completion")}
    calls = counter("docent_llm_request_seconds_count", call="stream", outcome="ok")
    client = _llm(streamed)
    assert [piece async for piece in client.stream([{"role": "user", "content": "hi"}])] == ["Hello"]
    await client.close()
    assert counter("docent_llm_tokens_total", kind="prompt") == before["prompt"] + 30
    assert counter("docent_llm_tokens_total", kind="completion") == before["completion"] + 2
    assert counter("docent_llm_request_seconds_count", call="stream", outcome="ok") == calls + 1

    limited = counter("docent_llm_errors_total", reason="LLM_RATE_LIMITED")
    failed_calls = counter("docent_llm_request_seconds_count", call="complete", outcome="error")
    client = _llm(lambda request: httpx.Response(429, json={"error": {"message": "slow down"}}))
    with pytest.raises(Exception, match="HTTP 429"):
        await client.complete([{"role": "user", "content": "hi"}])
    await client.close()
    assert counter("docent_llm_errors_total", reason="LLM_RATE_LIMITED") == limited + 1
    assert counter("docent_llm_request_seconds_count", call="complete", outcome="error") == failed_calls + 1


TRACED_LOG_SCRIPT = """
import logging, structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from services.runtime import tracing
from services.runtime.logging import configure_logging
configure_logging("info", "json", service="worker")
tracing.configure_tracing("worker", exporter=InMemorySpanExporter())
structlog.get_logger("docent.test").info("outside")
with tracing.span("stage") as span:
    ids = span.get_span_context()
    print(format(ids.trace_id, "032x"), format(ids.span_id, "016x"))
    structlog.get_logger("docent.test").info("inside")
    logging.getLogger("dramatiq.worker").warning("library line")
"""


def test_json_log_lines_carry_the_active_spans_ids() -> None:
    result = subprocess.run([sys.executable, "-c", TRACED_LOG_SCRIPT], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    trace_id, span_id = result.stdout.split()
    lines = {line["event"]: line for line in map(json.loads, result.stderr.splitlines())}
    assert "trace_id" not in lines["outside"]
    for event in ("inside", "library line"):
        assert (lines[event]["trace_id"], lines[event]["span_id"]) == (trace_id, span_id)


def test_a_retry_is_counted_when_the_failed_message_is_queued_again() -> None:
    middleware = JobContext()
    before = counter("docent_job_retries_total", queue="ingest", actor="process_document")
    message = dramatiq.Message(queue_name="ingest.DQ", actor_name="process_document", args=("d",), kwargs={},
                               options={"retries": 1})
    middleware.after_enqueue(dramatiq.get_broker(), message, 2000)
    middleware.after_enqueue(dramatiq.get_broker(), message.copy(options={"retries": 0}), None)  # a first enqueue
    assert counter("docent_job_retries_total", queue="ingest", actor="process_document") == before + 1


WORKER_PROCESS_SCRIPT = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from services.runtime.jobs import JOBS, JOB_QUEUE_LAG
JOBS.labels("ingest", "process_document", "processed").inc(3)
JOB_QUEUE_LAG.labels("ingest", "process_document").observe(0.2)
"""


def test_the_worker_metrics_port_serves_the_worker_processes_job_metrics(tmp_path) -> None:
    """`docent up`'s sweeper (not in multiprocess mode) serves its own metrics and those the worker processes
    wrote to the data dir's job-metrics directory."""
    from prometheus_client import generate_latest

    from services.runtime import metrics
    from services.runtime.jobs import job_metrics_dir, reset_job_metrics_dir

    directory = reset_job_metrics_dir(job_metrics_dir(tmp_path))
    for _ in range(2):  # two worker processes
        done = subprocess.run([sys.executable, "-c", WORKER_PROCESS_SCRIPT, str(directory)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    metrics.QUEUE_DEPTH.labels("ingest").set(4)  # the sweeper's own
    text = generate_latest(metrics.metrics_registry(directory)).decode()
    assert 'docent_jobs_total{actor="process_document",outcome="processed",queue="ingest"} 6.0' in text
    assert 'docent_job_queue_lag_seconds_count{actor="process_document",queue="ingest"} 2.0' in text
    assert 'docent_queue_depth{queue="ingest"} 4.0' in text
    assert not list(reset_job_metrics_dir(directory).glob("*.db"))  # a worker start empties it
