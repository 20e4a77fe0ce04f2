"""The REST gateway: a thin FastAPI app over the gRPC services, plus the web UI at `/`.

Every API call is validated here, authenticated with the user's bearer JWT (the same token is
forwarded to the gRPC services, which verify it themselves), given a deadline, and its gRPC
status mapped to HTTP (services/gateway/errors.py). The gateway owns only the accounts tables.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import structlog
from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from docent.v1 import chat_pb2_grpc, ingest_pb2_grpc
from services.gateway import accounts, routes_chat, routes_upload
from services.gateway.errors import install_error_handlers
from services.gateway.middleware import RequestContextMiddleware, UploadLimitMiddleware
from services.gateway.signin_limit import SigninLimits
from services.gateway.state import GatewayState
from services.runtime import db
from services.runtime.config import Settings
from services.runtime.grpc_client import create_channel
from services.runtime.names import GRPC_SERVICES

log = structlog.get_logger("docent.gateway")
STATIC_DIR = Path(__file__).resolve().parent / "static"
# what the gateway itself calls: its readiness depends on these only (retrieval being down is chat's concern)
CALLED = ("ingest", "chat")
DESCRIPTION = """REST API of Docent, a self-hosted "chat with your documents" server.

Sign up or sign in under **auth**, then send `Authorization: Bearer <access_token>` (the
**Authorize** button). Errors are JSON: `{"detail": "...", "reason": "UPPER_SNAKE"}`.
"""


def create_app(settings: Settings, jwt_secret: str) -> FastAPI:
    state = GatewayState(settings=settings, secret=jwt_secret)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # grpc.aio channels belong to the event loop they are created on: create them here
        for name in CALLED:
            state.channels[name] = create_channel(settings.target(name))  # type: ignore[arg-type]
        state.ingest = ingest_pb2_grpc.IngestServiceStub(state.channels["ingest"])
        state.chat = chat_pb2_grpc.ChatServiceStub(state.channels["chat"])
        if settings.database_url:
            state.pool = await db.create_pool(settings.database_url, max_size=min(settings.db_pool_max, 10))
        else:
            log.warning("accounts_disabled", why="DOCENT_DATABASE_URL is unset")
        try:
            yield
        finally:
            await asyncio.gather(*(channel.close() for channel in state.channels.values()))
            await _app.state.signin_limiter.close()
            if state.pool is not None:
                await state.pool.close()

    app = FastAPI(title="Docent", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  openapi_tags=[{"name": "auth"}, {"name": "documents"}, {"name": "chat"}, {"name": "ops"}])
    app.state.docent = state
    app.state.signin_limiter = SigninLimits(settings.redis_url)

    # outermost last: request context sees everything; CORS headers reach the early 413 too
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
        allow_methods=["*"], allow_headers=["*"],
        expose_headers=["Retry-After", "X-Request-ID", "X-Total-Count"],
    )
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)

    app.include_router(accounts.router)
    app.include_router(routes_upload.router)
    app.include_router(routes_chat.router)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Liveness: the gateway process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        """Readiness: the services the gateway calls (ingest, chat) report SERVING and the accounts database
        answers. Under `docent up`, `children` has the state of every role; one that is restarting makes the
        status `degraded` and is named in `restarting`, without making the gateway unready for what it can serve."""

        async def check(name: str) -> str:
            stub = health_pb2_grpc.HealthStub(state.channels[name])
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=GRPC_SERVICES[name]), timeout=2)
            except grpc.aio.AioRpcError:
                return "UNAVAILABLE"
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

        async def check_db() -> str:
            if state.pool is None:
                return "UNCONFIGURED"
            try:
                return "SERVING" if await asyncio.wait_for(db.ping(state.pool), 2) else "NOT_SERVING"
            except Exception:
                return "UNAVAILABLE"

        names = [*CALLED, "database"]
        statuses = await asyncio.gather(*(check(name) for name in CALLED), check_db())
        results = dict(zip(names, statuses, strict=True))
        ok = all(status == "SERVING" for status in results.values())
        body: dict[str, object] = {"status": "ready" if ok else "not_ready", "upstreams": results}
        children = supervised_children(settings.data_dir)
        if children is not None:
            # under `docent up`: also the roles the gateway cannot see (retrieval, worker, sweeper, Redis)
            body["children"] = children
            restarting = sorted(role for role, state in children.items() if state != "running")
            if restarting:
                body["restarting"] = restarting
                if ok:
                    body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    _install_docs(app)
    # the web UI; last, so that it never shadows an API route
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app


def supervised_children(data_dir: Path) -> dict[str, str] | None:
    """The state of each role of the `docent up` running for this data dir (None when there is none)."""
    try:
        status = json.loads((data_dir / "supervisor.json").read_text())
        os.kill(int(status["pid"]), 0)  # a file left by a killed `docent up` says nothing
        return {role: str(entry["state"]) for role, entry in status["roles"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, from the installed swagger-ui-bundle when present (works offline), else its CDN."""
    assets: dict[str, str] = {}
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-not-found]
    except ImportError:
        swagger_ui_path = None
    if swagger_ui_path and Path(swagger_ui_path, "swagger-ui-bundle.js").exists():
        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
        assets = {"swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
                  "swagger_css_url": "/docs-assets/swagger-ui.css"}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="Docent API",
                                   swagger_favicon_url="/favicon.svg", **assets)
