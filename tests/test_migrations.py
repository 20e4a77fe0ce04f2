"""Migrations: idempotent, and safe when several services start at once."""

from __future__ import annotations

import asyncio

import asyncpg

from services.runtime.db import load_migrations, migrate


async def test_migrations_apply_once_and_are_idempotent(fresh_database_url: str) -> None:
    expected = [migration.version for migration in load_migrations()]
    assert await migrate(fresh_database_url) == expected
    assert await migrate(fresh_database_url) == []
    conn = await asyncpg.connect(fresh_database_url)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        tables = {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert [row["version"] for row in rows] == expected
    assert {"users", "documents", "document_blobs", "conversations", "chat_turns"} <= tables


async def test_concurrent_migrations_apply_each_version_exactly_once(fresh_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_database_url) for _ in range(6)))
    applied = [version for result in results for version in result]
    assert sorted(applied) == [migration.version for migration in load_migrations()]
