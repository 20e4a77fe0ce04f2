"""Prometheus metrics shared by the services (one registry per process)."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

GRPC_REQUESTS = Counter(
    "docent_grpc_requests_total", "gRPC requests served, by outcome", ["service", "method", "code"]
)
GRPC_LATENCY = Histogram(
    "docent_grpc_request_seconds", "gRPC request duration", ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# the gauges are set by the sweeper alone: in a worker's multiprocess mode (services.runtime.jobs) its latest value
QUEUE_DEPTH = Gauge("docent_queue_depth", "Messages waiting in a Dramatiq queue", ["queue"],
                    multiprocess_mode="mostrecent")
# refreshed by the sweeper from the turns' own timestamps (the memory actors run in Dramatiq worker
# processes, which export no metrics)
MEMORY_LAG = Gauge("docent_memory_lag_seconds",
                   "Chat turn stored → searchable as memory, over the turns indexed in the last minute",
                   ["quantile"], multiprocess_mode="mostrecent")
MEMORY_OLDEST_WAITING = Gauge("docent_memory_oldest_waiting_seconds",
                              "Age of the oldest chat turn whose memory is not written yet (0: none)",
                              multiprocess_mode="mostrecent")
DOCUMENTS_BY_STATUS = Gauge("docent_documents", "Documents by processing status", ["status"],
                            multiprocess_mode="mostrecent")
CHILD_RESTARTS = Counter("docent_child_restarts", "Children of `docent up` restarted after they died", ["role"])

_started_ports: set[int] = set()


def metrics_registry(worker_metrics_dir: Path | None = None) -> CollectorRegistry:
    """What a metrics port serves: this process's metrics, and those the Dramatiq worker processes write
    to `worker_metrics_dir` (prometheus_client multiprocess files, services.runtime.jobs). A process in
    multiprocess mode itself (PROMETHEUS_MULTIPROC_DIR: the sweeper forked by `docent worker`) finds its
    own metrics among those files."""
    own_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if own_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, own_dir)
        return registry
    if worker_metrics_dir is None:
        return REGISTRY
    worker_metrics_dir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    registry.register(REGISTRY)  # type: ignore[arg-type]  (a registry is a collector of its metrics)
    MultiProcessCollector(registry, str(worker_metrics_dir))
    return registry


def start_metrics_server(port: int, host: str = "127.0.0.1", *, worker_metrics_dir: Path | None = None) -> None:
    if port and port not in _started_ports:
        start_http_server(port, addr=host, registry=metrics_registry(worker_metrics_dir))
        _started_ports.add(port)
