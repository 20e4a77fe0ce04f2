"""gRPC client channels: one place for retry policy, keepalive and per-call metadata.

Every call made with `call_options()` carries a deadline, the caller's bearer token and the
request id, so a request can be followed across services in the logs.
"""

from __future__ import annotations

import json

import grpc

from services.runtime.grpc_server import MAX_MESSAGE_BYTES, current_request_id

DOCENT_SERVICES = ("docent.v1.IngestService", "docent.v1.RetrievalService", "docent.v1.ChatService")

# Retries only on UNAVAILABLE (connection refused / restarting server): those calls never reached
# a handler, so retrying cannot double-apply anything.
_SERVICE_CONFIG = json.dumps({
    # spreads calls over every address a dns:/// target resolves to (a headless Service's pods)
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": name} for name in DOCENT_SERVICES],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})

CHANNEL_OPTIONS = [
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # reconnect quickly after a service restart
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def create_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def create_sync_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def call_metadata(token: str | None, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    metadata: list[tuple[str, str]] = []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    rid = request_id or current_request_id()
    if rid:
        metadata.append(("x-request-id", rid))
    return tuple(metadata)


def call_options(token: str | None, timeout: float, request_id: str | None = None) -> dict[str, object]:
    """Keyword arguments for a stub call: deadline + metadata."""
    return {"timeout": timeout, "metadata": call_metadata(token, request_id)}
