"""`docent worker`: Dramatiq worker processes for the `ingest` and `memory` queues."""

from __future__ import annotations

import os
import sys

from services.runtime.config import load_settings
from services.runtime.embedded import resolve_backing_urls
from services.runtime.jobs import JOB_METRICS_DIR_ENV, job_metrics_dir, reset_job_metrics_dir
from services.runtime.queue import QUEUES


def run_worker(queues: list[str] | None = None, processes: int | None = None,
               threads: int | None = None) -> int:
    settings = resolve_backing_urls(load_settings(), database=True, redis=True)
    chosen = queues or settings.worker_queues
    unknown = sorted(set(chosen) - set(QUEUES))
    if unknown:
        raise SystemExit(f"docent: unknown queue(s) {', '.join(unknown)}; known: {', '.join(QUEUES)}")
    # The Dramatiq processes import services.worker, which reads these to build its broker.
    os.environ["DOCENT_DATABASE_URL"] = settings.database_url or ""
    os.environ["DOCENT_REDIS_URL"] = settings.redis_url or ""
    # one metrics directory for the worker processes, emptied at each start (services.runtime.jobs)
    os.environ[JOB_METRICS_DIR_ENV] = str(reset_job_metrics_dir(job_metrics_dir(settings.data_dir)))
    argv = [
        sys.executable, "-m", "dramatiq", "services.worker",
        "--processes", str(processes or settings.worker_processes),
        "--threads", str(threads or settings.worker_threads),
        "--queues", *chosen,
        "--worker-shutdown-timeout", str(int(settings.grpc_grace_seconds * 1000) + 20_000),
        "--skip-logging",
    ]
    if settings.worker_sweeper:
        argv += ["--fork-function", "services.worker:run_sweeper"]
    # exec: the Dramatiq master takes this pid, so signals (and PR_SET_PDEATHSIG) reach it directly
    os.execv(sys.executable, argv)
    return 0  # unreachable
