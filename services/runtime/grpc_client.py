"""gRPC client channels: one place for retry policy, keepalive and per-call metadata.

Every call made with `call_options()` carries a deadline (never later than the one of the RPC it
serves), the caller's bearer token and the request id, so a request can be followed across services.
"""

from __future__ import annotations

import json

import grpc

from services.runtime.call_context import current_request_id, remaining_seconds
from services.runtime.names import MAX_MESSAGE_BYTES
from services.runtime.tracing import client_interceptors

# No retryPolicy: UNAVAILABLE does not prove that a call never ran (handlers raise it themselves, e.g.
# LLM_UNAVAILABLE, and a connection cut mid-call ends the same way), and the layer above owns the retry
# (docs/RELIABILITY.md): the REST client for user requests, Dramatiq for background jobs. What remains
# is gRPC's transparent retry (grpc.enable_retries), for calls that provably never reached a handler:
# never sent, or refused by the server's transport (REFUSED_STREAM, GOAWAY). A call to a service that
# is down fails at once (UNAVAILABLE → 503 with a reason), it does not wait for it.
_SERVICE_CONFIG = json.dumps({
    # spreads calls over every address a dns:/// target resolves to (a headless Service's pods)
    "loadBalancingConfig": [{"round_robin": {}}],
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
    # with tracing on, each call gets a client span whose context travels in the call's metadata
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=client_interceptors() or None)


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
    """Keyword arguments for a stub call: deadline + metadata. Inside an RPC handler the deadline is
    capped by the caller's, so one user request has one deadline across every hop."""
    return {"timeout": remaining_seconds(timeout), "metadata": call_metadata(token, request_id)}
