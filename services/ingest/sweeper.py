"""The sweeper: nothing stays pending or processing forever.

Runs beside the workers (a Dramatiq fork function, one per `docent worker`); several sweepers
are safe because each pass holds a Postgres advisory lock. Each pass:
- re-enqueues `pending` documents whose message is lost (enqueued long ago and no longer in the
  broker, or never enqueued); one that waits behind a backlog keeps its message;
- recovers `processing` documents whose lease expired (their worker died): back to pending and
  re-enqueued, or `failed` once they used up their attempts;
- re-enqueues chat turns whose memory was never indexed;
- refreshes the queue-depth and document-status gauges.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import structlog

from services.runtime import metrics
from services.runtime.config import Settings, load_settings
from services.runtime.lifecycle import die_with_parent
from services.runtime.logging import configure_logging
from services.runtime.names import INDEX_CHAT_TURN, PROCESS_DOCUMENT
from services.runtime.queue import INGEST_QUEUE, MEMORY_QUEUE, Enqueuer, pending_arguments, queue_stats

log = structlog.get_logger("docent.sweeper")
SWEEP_LOCK_KEY = 0x737765657065  # "sweepe"
MAX_MEMORY_SWEEPS = 6


async def sweep_once(settings: Settings, pool: asyncpg.Pool, enqueuer: Enqueuer) -> dict[str, int]:
    stale_after = max(settings.lease_seconds, 2 * settings.sweep_interval_seconds)
    counts = {"requeued": 0, "recovered": 0, "failed": 0, "turns": 0}
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK_KEY):
            return counts  # another sweeper is on it
        try:
            expired = await conn.fetch(
                """UPDATE documents
                   SET status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END,
                       stage = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END,
                       error = CASE WHEN attempts >= $1
                                    THEN 'processing did not finish after ' || attempts || ' attempts (worker lost)'
                                    ELSE 'recovered after a lost worker' END,
                       error_reason = CASE WHEN attempts >= $1 THEN 'WORKER_LOST' END,
                       lease_until = NULL, enqueued_at = NULL, updated_at = now()
                   WHERE status = 'processing' AND lease_until < now()
                   RETURNING id, status""", settings.max_attempts)
            counts["failed"] = sum(1 for row in expired if row["status"] == "failed")
            counts["recovered"] = len(expired) - counts["failed"]
            # A pending document enqueued long ago is waiting behind a backlog, or lost its message (Redis
            # restarted, enqueue failed, the worker that fetched it died). Only those without a waiting message
            # are re-enqueued, so that a backlog of N documents stays about N messages (plus the few a worker
            # has prefetched) instead of growing by N each sweep. A recovered document's old message belongs
            # to a dead worker: it gets a new one.
            recovered = {row["id"] for row in expired if row["status"] == "pending"}
            stale = await conn.fetch(
                """SELECT id FROM documents
                   WHERE status = 'pending'
                     AND (enqueued_at IS NULL OR enqueued_at < now() - make_interval(secs => $1))""", stale_after)
            # while documents are being processed, messages prefetched by live workers are waiting their turn
            busy = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM documents WHERE status = 'processing')")
            waiting = await asyncio.to_thread(pending_arguments, enqueuer.broker, INGEST_QUEUE, PROCESS_DOCUMENT,
                                              include_fetched=busy)
            lost = [row["id"] for row in stale if row["id"] in recovered or str(row["id"]) not in waiting]
            for ident in lost:
                task_id = await enqueuer.enqueue(INGEST_QUEUE, PROCESS_DOCUMENT, str(ident))
                await conn.execute(
                    "UPDATE documents SET task_id = $2, enqueued_at = now(), updated_at = now() WHERE id = $1",
                    ident, task_id)
            counts["requeued"] = len(lost)
            # each sweep waits longer before trying a turn again (stale_after × 2^sweeps), and gives up
            # after MAX_MEMORY_SWEEPS: a turn that always fails must not be retried forever
            turns = await conn.fetch(
                """UPDATE chat_turns SET memory_sweeps = memory_sweeps + 1
                   WHERE id IN (SELECT id FROM chat_turns WHERE memory_indexed_at IS NULL
                                AND memory_sweeps < $2
                                AND created_at < now() - make_interval(secs => $1 * (1 << memory_sweeps))
                                ORDER BY created_at LIMIT 500)
                   RETURNING id""",
                stale_after, MAX_MEMORY_SWEEPS)
            for row in turns:
                await enqueuer.enqueue(MEMORY_QUEUE, INDEX_CHAT_TURN, str(row["id"]))
            counts["turns"] = len(turns)
            for status, total in await conn.fetch("SELECT status, count(*) FROM documents GROUP BY status"):
                metrics.DOCUMENTS_BY_STATUS.labels(status).set(total)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK_KEY)
    for queue, stats in (await asyncio.to_thread(queue_stats, enqueuer.broker)).items():
        metrics.QUEUE_DEPTH.labels(queue).set(stats["waiting"])
    if any(counts.values()):
        log.info("sweep", **counts)
    return counts


async def _sweep_forever(settings: Settings, stop: asyncio.Event) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    enqueuer = Enqueuer(settings.redis_url or "")
    try:
        while not stop.is_set():
            try:
                await sweep_once(settings, pool, enqueuer)
            except Exception as error:  # a failed pass is retried on the next tick
                log.warning("sweep_failed", error=type(error).__name__, detail=str(error)[:200])
            try:
                await asyncio.wait_for(stop.wait(), settings.sweep_interval_seconds)
            except TimeoutError:
                pass
    finally:
        enqueuer.close()
        await pool.close()


def run_sweeper() -> int:
    die_with_parent(signal.SIGKILL)  # forked by the Dramatiq master: never outlive it (see services.worker)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, service="sweeper")
    if settings.worker_metrics_port:
        try:
            metrics.start_metrics_server(settings.worker_metrics_port, settings.bind_host)
        except OSError:
            log.warning("metrics_port_busy", port=settings.worker_metrics_port)  # another worker serves it

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _sweep_forever(settings, stop)

    asyncio.run(main())
    return 0


if __name__ == "__main__":  # `docent up` runs the sweeper as a child of its own (see DOCENT_WORKER_SWEEPER)
    raise SystemExit(run_sweeper())
