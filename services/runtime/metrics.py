"""Prometheus metrics shared by the services (one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

GRPC_REQUESTS = Counter(
    "docent_grpc_requests_total", "gRPC requests served, by outcome", ["service", "method", "code"]
)
GRPC_LATENCY = Histogram(
    "docent_grpc_request_seconds", "gRPC request duration", ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("docent_queue_depth", "Messages waiting in a Dramatiq queue", ["queue"])
# refreshed by the sweeper from the turns' own timestamps (the memory actors run in Dramatiq worker
# processes, which export no metrics)
MEMORY_LAG = Gauge("docent_memory_lag_seconds",
                   "Chat turn stored → searchable as memory, over the turns indexed in the last minute",
                   ["quantile"])
MEMORY_OLDEST_WAITING = Gauge("docent_memory_oldest_waiting_seconds",
                              "Age of the oldest chat turn whose memory is not written yet (0: none)")
DOCUMENTS_BY_STATUS = Gauge("docent_documents", "Documents by processing status", ["status"])
CHILD_RESTARTS = Counter("docent_child_restarts", "Children of `docent up` restarted after they died", ["role"])

_started_ports: set[int] = set()


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    if port and port not in _started_ports:
        start_http_server(port, addr=host)
        _started_ports.add(port)
