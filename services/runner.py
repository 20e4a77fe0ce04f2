"""Runs one service role in this process: `docent serve ingest|retrieval|chat|gateway`."""

from __future__ import annotations

import asyncio

from services.runtime.auth import jwt_secret
from services.runtime.config import Settings, load_settings
from services.runtime.embedded import resolve_backing_urls
from services.runtime.grpc_server import ServiceDefinition, serve
from services.runtime.logging import configure_logging

# the components that own tables, each with its migrations in services/<component>/migrations/
# (retrieval keeps no tables); `docent migrate`, `docent up` and the tests apply all of them
MIGRATION_COMPONENTS = ("gateway", "ingest", "chat")


def service_definition(role: str, settings: Settings) -> ServiceDefinition:
    if role == "ingest":
        from services.ingest.app import ingest_service

        return ingest_service(resolve_backing_urls(settings))
    if role == "retrieval":
        from services.retrieval.app import retrieval_service

        return retrieval_service(settings)
    if role == "chat":
        from services.chat.app import chat_service

        return chat_service(resolve_backing_urls(settings))
    raise ValueError(f"unknown role {role}")


def run_service(role: str) -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, service=role)
    secret = jwt_secret(settings)
    if role == "gateway":
        from services.gateway.main import run_gateway

        return run_gateway(resolve_backing_urls(settings, redis=False), secret)
    definition = service_definition(role, settings)
    asyncio.run(serve(definition, settings, port=getattr(settings, f"{role}_port"), jwt_secret=secret,
                      metrics_port=getattr(settings, f"{role}_metrics_port")))
    return 0


async def migrate_all(database_url: str) -> list[str]:
    """Apply every component's pending migrations; returns the ones applied now (`ingest/0003_blob_storage`)."""
    from services.runtime.db import migrate

    return await migrate(database_url, MIGRATION_COMPONENTS)


def run_migrations() -> int:
    settings = resolve_backing_urls(load_settings(), redis=False)
    configure_logging(settings.log_level, settings.log_format, service="migrate")
    applied = asyncio.run(migrate_all(settings.database_url or ""))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0
