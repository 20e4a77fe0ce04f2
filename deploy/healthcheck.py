"""Container health check: `entrypoint.sh health ROLE` exits 0 when ROLE is healthy, 1 when not.

Used by docker-compose (Kubernetes uses native grpc/httpGet probes instead). Ports come from the same
DOCENT_* settings the service itself reads, so the check follows any port override.

- ingest | retrieval | chat: the standard gRPC health service reports SERVING for the role's service
  (the services report NOT_SERVING until their dependencies answer, and again while shutting down);
- gateway: GET /ready answers 200 (ingest and chat SERVING and the accounts database answering);
- worker: the worker's Prometheus endpoint answers (served by the sweeper process beside Dramatiq).
"""

from __future__ import annotations

import sys
import urllib.request

# the names each service registers with the health service (services/*/app.py SERVICE_NAME)
GRPC_SERVICES = {
    "ingest": "docent.v1.IngestService",
    "retrieval": "docent.v1.RetrievalService",
    "chat": "docent.v1.ChatService",
}
ROLES = (*GRPC_SERVICES, "gateway", "worker")
TIMEOUT_SECONDS = 4.0


def _host(bind_host: str) -> str:
    # a wildcard bind is reached on loopback; a specific address on itself
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def check_grpc(host: str, port: int, service: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            print(f"unhealthy: {service} at {host}:{port}: {error.code().name}", file=sys.stderr)
            return False
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {service}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
              file=sys.stderr)
        return False
    return True


def check_http(url: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError as error:  # URLError and HTTPError (a 503 from /ready) are OSErrors
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ROLES:
        print(f"usage: healthcheck.py {{{'|'.join(ROLES)}}}", file=sys.stderr)
        return 2
    role = argv[0]
    from services.runtime.config import load_settings

    settings = load_settings()
    host = _host(settings.bind_host)
    if role in GRPC_SERVICES:
        ok = check_grpc(host, getattr(settings, f"{role}_port"), GRPC_SERVICES[role])
    elif role == "gateway":
        ok = check_http(f"http://{host}:{settings.gateway_port}/ready")
    else:
        ok = check_http(f"http://{host}:{settings.worker_metrics_port}/metrics")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
