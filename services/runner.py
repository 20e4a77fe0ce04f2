"""Runs one service role in this process: `docent serve ingest|retrieval|chat|gateway`."""

from __future__ import annotations

import asyncio

from services.runtime.auth import jwt_secret
from services.runtime.config import Settings, load_settings
from services.runtime.embedded import find_running_postgres_url, find_running_redis_url
from services.runtime.grpc_server import ServiceDefinition, serve
from services.runtime.logging import configure_logging

# the components that own tables, each with its migrations in services/<component>/migrations/
# (retrieval keeps no tables); `docent migrate`, `docent up` and the tests apply all of them
MIGRATION_COMPONENTS = ("gateway", "ingest", "chat")


def resolve_backing_urls(settings: Settings, *, database: bool = True, redis: bool = True) -> Settings:
    """Fill unset URLs from the embedded services that `docent up` runs for this data dir.

    A single service started on its own never starts Postgres/Redis itself (two services would
    race to own them); it fails fast instead, naming the setting to provide.
    """
    updates: dict[str, str] = {}
    if database and not settings.database_url:
        url = find_running_postgres_url(settings.data_dir)
        if not url:
            raise SystemExit(
                f"docent: DOCENT_DATABASE_URL is unset and no embedded Postgres runs for {settings.data_dir}; "
                "start everything with `docent up` or set DOCENT_DATABASE_URL"
            )
        updates["database_url"] = url
    if redis and not settings.redis_url:
        url = find_running_redis_url(settings.data_dir)
        if not url:
            raise SystemExit(
                f"docent: DOCENT_REDIS_URL is unset and no embedded Redis runs for {settings.data_dir}; "
                "start everything with `docent up` or set DOCENT_REDIS_URL"
            )
        updates["redis_url"] = url
    return settings.model_copy(update=updates) if updates else settings


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
