"""Crashes and outages during ingestion: nothing stuck, nothing lost, nothing indexed twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import grpc
import psutil

from docent.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest.app import ingest_service
from services.ingest.chunk import chunk_pages
from services.ingest.parse import iter_pages
from services.ingest.pipeline import MAX_CHUNK_TOKENS, OVERLAP_TOKENS
from services.retrieval.app import retrieval_service
from services.runtime.embedded import EmbeddedRedis
from services.runtime.embeddings import Tokenizer
from tests.conftest import Built, create_database, free_port, make_data_dir, make_settings, running_service
from tests.ingest_harness import IngestStack, WorkerProcess, ingest_stack

COMPLETED = ingest_pb2.DOCUMENT_STATUS_COMPLETED
FAULT_SETTINGS = {"lease_seconds": 5, "sweep_interval_seconds": 1, "max_attempts": 5}


def batch(count: int, paragraphs: int = 30) -> list[tuple[str, bytes]]:
    files = []
    for number in range(count):
        text = "\n\n".join(
            f"Section {part} of report {number}. The measured value for report {number}, part {part}, was "
            f"{(number + 1) * (part + 3)} units, which the committee compared with the previous period."
            for part in range(paragraphs))
        files.append((f"report-{number:02d}.txt", text.encode()))
    return files


def clean_run_chunks(content: bytes) -> int:
    """What a single uninterrupted run produces for this file."""
    return sum(1 for _ in chunk_pages(iter_pages(content, "text/plain"), Tokenizer.shared().count,
                                      max_tokens=MAX_CHUNK_TOKENS, overlap_tokens=OVERLAP_TOKENS))


async def count_status(running: IngestStack, user: str, ids: list[str]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for ident in ids:
        status = (await running.get(user, ident)).status
        counts[status] = counts.get(status, 0) + 1
    return counts


async def assert_all_completed_exactly_once(running: IngestStack, user: str, files, ids, worker) -> None:
    documents = await running.wait_terminal(user, ids, timeout=240, worker=worker)
    for (name, content), ident in zip(files, ids, strict=True):
        document = documents[ident]
        assert document.status == COMPLETED, (name, document.error)
        expected = clean_run_chunks(content)
        assert document.chunk_count == expected, name
        assert await running.stored_chunks(user, ident) == expected, f"{name}: duplicates or leftovers"


async def test_kill_9_worker_mid_batch_then_a_new_worker_completes_everything(backing, embedder) -> None:
    settings = make_settings(backing, database_url=await create_database(backing.database_url), **FAULT_SETTINGS)
    async with ingest_stack(settings, embedder) as running:
        user = f"user-{uuid.uuid4().hex[:8]}"
        files = batch(20)
        ids = [(await running.upload(user, name, content)).document.id for name, content in files]
        first = running.worker("first").start()
        try:
            deadline = time.monotonic() + 180
            while (await count_status(running, user, ids)).get(COMPLETED, 0) < 3:
                assert time.monotonic() < deadline, first.output()[-3000:]
                await asyncio.sleep(0.1)
        finally:
            first.kill_hard()
        counts = await count_status(running, user, ids)
        assert counts.get(COMPLETED, 0) < 20, "the worker finished before it could be killed"

        second = running.worker("second").start()
        try:
            await assert_all_completed_exactly_once(running, user, files, ids, second)
        finally:
            second.stop()
        stuck = await running.ingest_built.service.pool.fetchval(
            "SELECT count(*) FROM documents WHERE status IN ('pending', 'processing')")
        assert stuck == 0


async def test_redis_restart_mid_batch_still_completes_everything(backing, embedder) -> None:
    redis_dir = make_data_dir("docent-redis-")
    redis_server = EmbeddedRedis(redis_dir)
    redis_url = redis_server.start()
    settings = make_settings(backing, database_url=await create_database(backing.database_url), redis_url=redis_url,
                             **FAULT_SETTINGS)
    try:
        async with ingest_stack(settings, embedder) as running:
            user = f"user-{uuid.uuid4().hex[:8]}"
            files = batch(10)
            worker = running.worker().start()
            try:
                ids = [(await running.upload(user, name, content)).document.id for name, content in files[:6]]
                deadline = time.monotonic() + 180
                while (await count_status(running, user, ids)).get(COMPLETED, 0) < 1:
                    assert time.monotonic() < deadline, worker.output()[-3000:]
                    await asyncio.sleep(0.1)
                # a hard crash: whatever the AOF had not synced is lost
                assert redis_server.process is not None
                os.kill(redis_server.process.pid, signal.SIGKILL)
                redis_server.process.wait(10)
                # uploads while Redis is down are still acknowledged: the row is the truth
                ids += [(await running.upload(user, name, content)).document.id for name, content in files[6:]]
                await asyncio.sleep(2)
                redis_server.start()
                await assert_all_completed_exactly_once(running, user, files, ids, worker)
            finally:
                worker.stop()
    finally:
        redis_server.stop()


async def test_retrieval_down_while_indexing_is_retried_until_it_returns(backing, embedder) -> None:
    settings = make_settings(backing, database_url=await create_database(backing.database_url), **FAULT_SETTINGS)
    retrieval_port = free_port()
    settings = settings.model_copy(update={"retrieval_target": f"127.0.0.1:{retrieval_port}"})
    retrieval = Built(retrieval_service(settings, embedder=embedder))
    ingest = Built(ingest_service(settings))
    async with running_service(ingest, settings) as ingest_target, \
            grpc.aio.insecure_channel(ingest_target) as channel:
        running = IngestStack(settings, ingest_pb2_grpc.IngestServiceStub(channel), None, retrieval,  # type: ignore[arg-type]
                              ingest)
        user = f"user-{uuid.uuid4().hex[:8]}"
        files = batch(2)
        ids = [(await running.upload(user, name, content)).document.id for name, content in files]
        worker = running.worker().start()  # the retrieval service is not running yet
        try:
            deadline = time.monotonic() + 120
            while "retrying" not in (await running.get(user, ids[0])).error:
                assert time.monotonic() < deadline, worker.output()[-3000:]
                await asyncio.sleep(0.2)
            async with running_service(retrieval, settings, port=retrieval_port):
                documents = await running.wait_terminal(user, ids, timeout=180, worker=worker)
                for ident in ids:
                    assert documents[ident].status == COMPLETED, documents[ident].error
                    assert documents[ident].progress.attempts >= 1
                assert max(documents[ident].progress.attempts for ident in ids) >= 2
                for (_, content), ident in zip(files, ids, strict=True):
                    assert await running.stored_chunks(user, ident) == clean_run_chunks(content)
        finally:
            worker.stop()


async def test_worker_processes_die_with_a_kill_9ed_dramatiq_master(backing) -> None:
    settings = make_settings(backing, **FAULT_SETTINGS)
    worker = WorkerProcess(settings, settings.data_dir / "lifecycle.log").start()
    assert worker.process is not None
    master = psutil.Process(worker.process.pid)
    try:
        deadline = time.monotonic() + 60
        while len(master.children()) < 2:  # the worker process and the sweeper
            assert time.monotonic() < deadline, worker.output()[-3000:]
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        children = master.children(recursive=True)
        master.kill()
        worker.process.wait(10)
        deadline = time.monotonic() + 15
        while any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children):
            assert time.monotonic() < deadline, "orphaned worker processes survived their master"
            await asyncio.sleep(0.2)
    finally:
        worker.stop()
