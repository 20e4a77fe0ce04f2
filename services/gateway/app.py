"""The REST gateway: a thin FastAPI app over the gRPC services."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.runtime.config import Settings
from services.runtime.grpc_client import create_channel

UPSTREAMS = {
    "ingest": "docent.v1.IngestService",
    "retrieval": "docent.v1.RetrievalService",
    "chat": "docent.v1.ChatService",
}


def create_app(settings: Settings, jwt_secret: str) -> FastAPI:
    # grpc.aio channels belong to the event loop they are created on: create them in the lifespan
    channels: dict[str, grpc.aio.Channel] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for name in UPSTREAMS:
            channels[name] = create_channel(settings.target(name))  # type: ignore[arg-type]
        yield
        await asyncio.gather(*(channel.close() for channel in channels.values()))

    app = FastAPI(title="Docent", version="0.1.0", lifespan=lifespan)
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
        allow_methods=["*"], allow_headers=["*"],
    )

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        async def check(name: str) -> str:
            stub = health_pb2_grpc.HealthStub(channels[name])
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=UPSTREAMS[name]), timeout=2)
            except Exception:
                return "UNAVAILABLE"
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

        results = dict(zip(UPSTREAMS, await asyncio.gather(*(check(name) for name in UPSTREAMS)), strict=True))
        ok = all(status == "SERVING" for status in results.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "upstreams": results},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
