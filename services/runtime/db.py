"""Postgres: the asyncpg pool and versioned SQL migrations.

Migrations are the files `migrations/NNNN_name.sql`, applied in order, each in its own
transaction, under a session advisory lock so that several services starting at once apply
each migration exactly once. Applied versions are recorded in `schema_migrations`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger("docent.db")

# an arbitrary, fixed key: "docent" in ASCII
MIGRATION_LOCK_KEY = 0x646F63656E74
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    folder = resources.files("services.runtime") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version, migration.name,
                )
            applied_now.append(migration.version)
            log.info("migration_applied", version=migration.version, name=migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def connect_with_retry(dsn: str, timeout: float = 30.0) -> asyncpg.Connection:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=5)
        except (TimeoutError, OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def migrate(dsn: str) -> list[int]:
    conn = await connect_with_retry(dsn)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


async def create_pool(dsn: str, *, max_size: int = 10, run_migrations: bool = True) -> asyncpg.Pool:
    if run_migrations:
        await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, command_timeout=60)
    assert pool is not None
    return pool


async def ping(pool: asyncpg.Pool) -> bool:
    async with pool.acquire(timeout=2) as conn:
        return await conn.fetchval("SELECT 1") == 1
