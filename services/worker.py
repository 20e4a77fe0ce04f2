"""Dramatiq entry module (`dramatiq services.worker`): the broker, the actors and the sweeper.

Imported by every worker process. The broker must be set before the actor modules are
imported, because Dramatiq binds actors to the global broker at declaration time.
"""

from __future__ import annotations

import os
import signal

# `docent worker` gives its processes one prometheus_client multiprocess directory, which the worker metrics
# port serves (services.runtime.jobs). It must be set before prometheus_client is first imported.
if os.environ.get("DOCENT_JOB_METRICS_DIR"):
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.environ["DOCENT_JOB_METRICS_DIR"])

import dramatiq
from dramatiq.middleware import AsyncIO, CurrentMessage, default_middleware

from services.runtime import tracing
from services.runtime.config import load_settings
from services.runtime.jobs import JobContext
from services.runtime.lifecycle import die_with_parent
from services.runtime.logging import configure_logging
from services.runtime.queue import create_broker

# Each Dramatiq worker process imports this module: tie it to the Dramatiq master, so a master
# killed outright (kill -9, or `docent up` SIGKILLed) leaves no worker process behind. SIGKILL,
# because Dramatiq's graceful stop hangs once the master's log pipe is gone; the document leases
# and the sweeper recover whatever was in flight.
die_with_parent(signal.SIGKILL)

settings = load_settings()
configure_logging(settings.log_level, settings.log_format, service="worker")
if not settings.redis_url or not settings.database_url:
    raise SystemExit(
        "docent: the worker needs DOCENT_REDIS_URL and DOCENT_DATABASE_URL (start it with `docent worker`)"
    )


class TracingAtBoot(dramatiq.Middleware):
    """Tracing (on when OTEL_EXPORTER_OTLP_ENDPOINT is set) in each worker process as it boots: not at import,
    which the sweeper forked beside the workers shares (it sets up its own, as `docent-sweeper`)."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        tracing.configure_tracing("worker")


broker = create_broker(
    settings.redis_url,
    # JobContext: the request id and trace context of the enqueuer, job metrics
    middleware=[middleware() for middleware in default_middleware] + [AsyncIO(), CurrentMessage(), JobContext(),
                                                                      TracingAtBoot()],
)
dramatiq.set_broker(broker)

from services.chat import actors as chat_actors  # noqa: E402,F401  (index_chat_turn on the memory queue)
from services.ingest import actors as ingest_actors  # noqa: E402,F401  (declares actors on the broker)
from services.sweeper import run_sweeper  # noqa: E402,F401  (Dramatiq fork function)
