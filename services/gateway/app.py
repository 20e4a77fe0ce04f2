"""The REST gateway: a thin FastAPI app over the gRPC services, plus the web UI at `/`.

Every API call is validated here, authenticated with the user's bearer JWT (the same token is
forwarded to the gRPC services, which verify it themselves), given a deadline, and its gRPC
status mapped to HTTP (services/gateway/errors.py). The gateway owns only its accounts tables (users,
revoked_tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.gateway import (
    accounts,
    routes_api_keys,
    routes_chat,
    routes_collections,
    routes_file_types,
    routes_upload,
    routes_usage,
    schemas,
)
from services.gateway.errors import INTERNAL, error_responses, install_error_handlers
from services.gateway.middleware import RequestContextMiddleware, UploadLimitMiddleware
from services.gateway.schemas import HealthOut, ReadyOut
from services.gateway.state import CALLED, GatewayState, get_state
from services.runtime import db
from services.runtime.config import Settings
from services.runtime.names import GRPC_SERVICES

STATIC_DIR = Path(__file__).resolve().parent / "static"
DESCRIPTION = """REST API of Docent, a self-hosted "chat with your documents" server.

Sign up or sign in under **auth**, then send `Authorization: Bearer <access_token>` (the
**Authorize** button). Errors are JSON: `{"detail": "...", "reason": "UPPER_SNAKE"}` (`ErrorOut`; 5xx add
`request_id`); a 422 has the list of problems in `detail` and `"reason": "VALIDATION_ERROR"`
(`ValidationErrorOut`). The two server-sent-event routes list their events and the schema of each
event's data in their description and in `x-sse-events`.
"""


def operation_id(route: APIRoute) -> str:
    """A route's operationId when it does not set one: its function's name in camelCase (`list_documents` →
    `listDocuments`). The API's routes all set theirs (stable names for client generators)."""
    first, *rest = route.name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def create_app(settings: Settings, jwt_secret: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await GatewayState.open(settings, jwt_secret)
        app.state.docent = state
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(title="Docent", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, generate_unique_id_function=operation_id,
                  openapi_tags=[{"name": "auth"}, {"name": "documents"}, {"name": "chat"}, {"name": "ops"}])

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
    app.include_router(routes_file_types.router)
    app.include_router(routes_chat.router)
    app.include_router(routes_api_keys.router)
    app.include_router(routes_usage.router)
    app.include_router(routes_collections.router)

    @app.get("/health", tags=["ops"], response_model=HealthOut, operation_id="getHealth",
             responses=error_responses({500: INTERNAL}))
    async def health() -> HealthOut:
        """Liveness: the gateway process answers."""
        return HealthOut(status="ok")

    @app.get("/ready", tags=["ops"], response_model=ReadyOut, response_model_exclude_none=True,
             operation_id="getReadiness",
             responses={**error_responses({500: INTERNAL}),
                        # not an error body: the same readiness report, saying what is not serving
                        503: {"model": ReadyOut, "description": "an upstream or the database is not serving"}})
    async def ready(request: Request, response: Response) -> ReadyOut:
        """Readiness: the services the gateway calls (ingest, chat) report SERVING and the accounts database
        answers. Under `docent up`, `children` has the state of every role; one that is restarting makes the
        status `degraded` and is named in `restarting`, without making the gateway unready for what it can serve."""

        state = get_state(request)

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
        body = ReadyOut(status="ready" if ok else "not_ready", upstreams=results)
        children = supervised_children(settings.data_dir)
        if children is not None:
            # under `docent up`: also the roles the gateway cannot see (retrieval, worker, sweeper, Redis)
            body.children = children
            restarting = sorted(role for role, role_state in children.items() if role_state != "running")
            if restarting:
                body.restarting = restarting
                if ok:
                    body.status = "degraded"
        response.status_code = 200 if ok else 503
        return body

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    _install_openapi(app)
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


def _install_openapi(app: FastAPI) -> None:
    """FastAPI's document, plus the schemas it refers to that no JSON route returns (schemas.EXTRA_SCHEMAS:
    the data of SSE events, the sub-objects of a context item), and the examples with their nulls."""
    generate = app.openapi
    _, extra = models_json_schema([(model, "serialization") for model in schemas.EXTRA_SCHEMAS],
                                  ref_template="#/components/schemas/{model}")
    examples = {model.__name__: model.model_config["json_schema_extra"]["examples"]  # type: ignore[index]
                for model in _models(accounts, schemas)
                if isinstance(model.model_config.get("json_schema_extra"), dict)}

    def openapi() -> dict[str, Any]:
        schema = generate()  # FastAPI's, cached by FastAPI until the routes change; completed in place, idempotently
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in extra.get("$defs", {}).items():
            components.setdefault(name, definition)
        # FastAPI drops every null from its document, the nulls of the models' examples too: put them back
        for name, model_examples in examples.items():
            if name in components:
                components[name]["examples"] = model_examples
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _models(*modules: ModuleType) -> list[type[BaseModel]]:
    return [value for module in modules for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__]


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
