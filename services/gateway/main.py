"""Runs the REST gateway under uvicorn."""

from __future__ import annotations

import uvicorn

from services.runtime import tracing
from services.runtime.config import Settings


def run_gateway(settings: Settings, jwt_secret: str) -> int:
    from services.gateway.app import create_app

    tracing.configure_tracing("gateway")  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    app = create_app(settings, jwt_secret)
    tracing.instrument_fastapi(app)
    config = uvicorn.Config(
        app, host=settings.bind_host, port=settings.gateway_port, log_config=None, access_log=False,
        timeout_graceful_shutdown=int(settings.grpc_grace_seconds), lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0
