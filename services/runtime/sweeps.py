"""The sweeper process: periodic passes that make sure no queued work waits forever.

Each component registers the passes that repair its own data (`SweepPass`); the process that runs
them (services/sweeper.py) is started beside the workers, as a Dramatiq fork function of each
`docent worker`, or as a child of its own under `docent up`. It refuses to start while the schema
of a pass's component is behind (`docent migrate` first). Several sweepers are safe: each pass
runs under its own Postgres advisory lock, and a pass that another sweeper is running is skipped.
Every round also refreshes the queue-depth gauges and logs `sweep` with the passes' counts when
any of them did something.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from services.runtime import metrics, tracing
from services.runtime.config import Settings, load_settings
from services.runtime.db import require_migrated
from services.runtime.jobs import job_metrics_dir
from services.runtime.lifecycle import die_with_parent
from services.runtime.logging import configure_logging
from services.runtime.queue import Enqueuer, queue_stats

log = structlog.get_logger("docent.sweeper")


@dataclass(frozen=True)
class SweepContext:
    settings: Settings
    enqueuer: Enqueuer

    @property
    def stale_after(self) -> float:
        """Seconds after which work enqueued and not yet done may have lost its message: a lease, and
        at least two sweeps, so that a message still on its way is not doubled."""
        return max(self.settings.lease_seconds, 2 * self.settings.sweep_interval_seconds)


@dataclass(frozen=True)
class SweepPass:
    """A component's repair pass on its own tables: `run` gets a connection that holds `lock_key` and
    returns named counts."""

    name: str
    component: str
    lock_key: int
    run: Callable[[asyncpg.Connection, SweepContext], Awaitable[dict[str, int]]]


async def _run_pass(sweep: SweepPass, pool: asyncpg.Pool, context: SweepContext) -> dict[str, int]:
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", sweep.lock_key):
            return {}  # another sweeper is on it
        try:
            return await sweep.run(conn, context)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", sweep.lock_key)


async def sweep_once(passes: Sequence[SweepPass], settings: Settings, pool: asyncpg.Pool,
                     enqueuer: Enqueuer) -> dict[str, int]:
    """Run each pass once, in order; returns their counts merged. A failing pass does not stop the next."""
    context = SweepContext(settings, enqueuer)
    counts: dict[str, int] = {}
    for sweep in passes:
        try:
            counts.update(await _run_pass(sweep, pool, context))
        except Exception as error:  # retried on the next round
            log.warning("sweep_failed", sweep=sweep.name, error=type(error).__name__, detail=str(error)[:200])
    for queue, stats in (await asyncio.to_thread(queue_stats, enqueuer.broker)).items():
        metrics.QUEUE_DEPTH.labels(queue).set(stats["waiting"])
    if any(counts.values()):
        log.info("sweep", **counts)
    return counts


async def sweep_forever(passes: Sequence[SweepPass], settings: Settings, stop: asyncio.Event) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    enqueuer = Enqueuer(settings.redis_url or "")
    try:
        for component in dict.fromkeys(sweep.component for sweep in passes):
            await require_migrated(pool, component)
        while not stop.is_set():
            try:
                await sweep_once(passes, settings, pool, enqueuer)
            except Exception as error:  # the broker unreachable for the gauges: the next round tries again
                log.warning("sweep_failed", error=type(error).__name__, detail=str(error)[:200])
            try:
                await asyncio.wait_for(stop.wait(), settings.sweep_interval_seconds)
            except TimeoutError:
                pass
    finally:
        enqueuer.close()
        await pool.close()


def run_sweeper(passes: Sequence[SweepPass]) -> int:
    """The sweeper process's main: sweep every `sweep_interval_seconds` until SIGTERM/SIGINT."""
    die_with_parent(signal.SIGKILL)  # forked by the Dramatiq master: never outlive it (see services.worker)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, service="sweeper")
    tracing.configure_tracing("sweeper")  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    if settings.worker_metrics_port:
        try:
            # with the job metrics of the worker processes on this data dir (services.runtime.jobs)
            metrics.start_metrics_server(settings.worker_metrics_port, settings.bind_host,
                                         worker_metrics_dir=job_metrics_dir(settings.data_dir))
        except OSError:
            log.warning("metrics_port_busy", port=settings.worker_metrics_port)  # another worker serves it

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await sweep_forever(passes, settings, stop)

    asyncio.run(main())
    return 0
