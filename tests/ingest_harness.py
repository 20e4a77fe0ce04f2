"""A real ingest stack for tests: in-process ingest + retrieval gRPC servers and `docent worker` processes.

The worker is a real Dramatiq process group (master, worker process, sweeper) started with the
`docent worker` command, pointed at the in-process services, so tests can kill it like an
operator's machine would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from docent.v1 import ingest_pb2, ingest_pb2_grpc, retrieval_pb2_grpc
from services.ingest.app import ingest_service
from services.retrieval.app import retrieval_service
from services.retrieval.store import SearchFilters, Source
from services.runtime.config import Settings
from tests.conftest import REPO, TEST_SECRET, Built, auth, free_port, running_service

STATUS = ingest_pb2.DocumentStatus
TERMINAL = {ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED}


class WorkerProcess:
    """`docent worker` as a subprocess with its own log file."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("DOCENT_")}
        self.env.update({
            "DOCENT_DATA_DIR": str(settings.data_dir),
            "DOCENT_DATABASE_URL": settings.database_url or "",
            "DOCENT_REDIS_URL": settings.redis_url or "",
            "DOCENT_RETRIEVAL_TARGET": settings.target("retrieval"),
            # the worker embeds with the model the in-process retrieval store was opened for
            "DOCENT_EMBEDDING_MODEL": settings.embedding_model,
            "DOCENT_JWT_SECRET": TEST_SECRET,
            "DOCENT_WORKER_METRICS_PORT": "0",
            "DOCENT_LOG_FORMAT": "json",
            "DOCENT_LEASE_SECONDS": str(settings.lease_seconds),
            "DOCENT_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
            "DOCENT_MAX_ATTEMPTS": str(settings.max_attempts),
            "PYTHONUNBUFFERED": "1",
        })
        if settings.webhook_secret is not None:
            self.env["DOCENT_WEBHOOK_SECRET"] = settings.webhook_secret.get_secret_value()
        if settings.webhook_allow_private:
            self.env["DOCENT_WEBHOOK_ALLOW_PRIVATE"] = "true"
        self.env.update(env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--processes", "1", "--threads", "2"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill_hard(self) -> None:
        """kill -9 the whole process group: master, worker processes and the sweeper."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill_hard()
        # the group's stragglers (a worker process mid-shutdown) must not outlive the test
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(proc.pid) == self.process.pid:
                    proc.kill()


@dataclass
class IngestStack:
    settings: Settings
    ingest: ingest_pb2_grpc.IngestServiceStub
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub
    # the services as built, to look inside them (retrieval.service.store, ingest.service.pool)
    retrieval_built: Built
    ingest_built: Built
    ingest_target: str = ""

    def worker(self, name: str = "worker", **env: str) -> WorkerProcess:
        return WorkerProcess(self.settings, self.settings.data_dir / f"{name}.log", **env)

    async def upload(self, user: str, filename: str, content: bytes, content_type: str = "",
                     block: int = 64 * 1024, webhook_url: str = "") -> ingest_pb2.UploadDocumentResponse:
        async def requests():
            yield ingest_pb2.UploadDocumentRequest(metadata=ingest_pb2.UploadMetadata(
                filename=filename, content_type=content_type, webhook_url=webhook_url))
            for start in range(0, len(content), block):
                yield ingest_pb2.UploadDocumentRequest(chunk=content[start:start + block])

        return await self.ingest.UploadDocument(requests(), metadata=auth(user), timeout=30)

    async def get(self, user: str, document_id: str) -> ingest_pb2.Document:
        return await self.ingest.GetDocument(ingest_pb2.GetDocumentRequest(document_id=document_id),
                                             metadata=auth(user), timeout=10)

    async def wait_terminal(self, user: str, document_ids: list[str], timeout: float = 120,
                            worker: WorkerProcess | None = None) -> dict[str, ingest_pb2.Document]:
        deadline = time.monotonic() + timeout
        while True:
            documents = {ident: await self.get(user, ident) for ident in document_ids}
            if all(document.status in TERMINAL for document in documents.values()):
                return documents
            if time.monotonic() > deadline:
                states = {ident: (STATUS.Name(d.status), d.progress.stage, d.error) for ident, d in documents.items()}
                tail = worker.output()[-3000:] if worker else ""
                raise AssertionError(f"documents not terminal after {timeout}s: {states}\n{tail}")
            await asyncio.sleep(0.2)

    async def stored_chunks(self, user: str, document_id: str) -> int:
        store = self.retrieval_built.service.store
        return await store.count(Source.DOCUMENTS, user, SearchFilters(document_ids=(document_id,)))


@contextlib.asynccontextmanager
async def ingest_stack(settings: Settings, embedder, retrieval_port: int | None = None) -> AsyncIterator[IngestStack]:
    """Retrieval on a fixed port (so it can be restarted at the same address) and ingest pointing at it."""
    retrieval_port = retrieval_port or free_port()
    settings = settings.model_copy(update={"retrieval_target": f"127.0.0.1:{retrieval_port}"})
    retrieval = Built(retrieval_service(settings, embedder=embedder))
    async with running_service(retrieval, settings, port=retrieval_port):
        ingest = Built(ingest_service(settings))
        async with running_service(ingest, settings) as ingest_target:
            async with grpc.aio.insecure_channel(ingest_target) as ingest_channel, \
                    grpc.aio.insecure_channel(settings.target("retrieval")) as retrieval_channel:
                yield IngestStack(settings, ingest_pb2_grpc.IngestServiceStub(ingest_channel),
                                  retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel), retrieval,
                                  ingest, ingest_target)
