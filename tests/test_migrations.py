"""Migrations: per component, idempotent, safe when run concurrently, and upgrading databases that the
single-list runner migrated (tests/data/single_list_migrations holds the five files it applied)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from services.runner import MIGRATION_COMPONENTS, migrate_all
from services.runtime.db import load_migrations, migrate, require_migrated

SINGLE_LIST = Path(__file__).resolve().parent / "data" / "single_list_migrations"
OWNED_TABLES = {
    "gateway": {"users", "revoked_tokens", "api_keys"},
    "ingest": {"documents", "document_blobs", "document_versions", "collections", "collection_members"},
    "chat": {"conversations", "chat_turns"},
}


def all_labels() -> list[str]:
    return [migration.label for component in MIGRATION_COMPONENTS for migration in load_migrations(component)]


def labels_since_the_split() -> list[str]:
    """Migrations written after the single list was split: a single-list database still needs them."""
    return [migration.label for component in MIGRATION_COMPONENTS for migration in load_migrations(component)
            if migration.legacy_version is None]


async def schema(url: str) -> dict[str, object]:
    """Tables with their columns, indexes, constraints and triggers: what must match after an upgrade."""
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            """SELECT table_name, column_name, data_type, is_nullable, column_default
               FROM information_schema.columns WHERE table_schema = 'public'
                 AND table_name NOT IN ('schema_migrations', 'legacy_schema_migrations')
               ORDER BY table_name, column_name""")
        indexes = await conn.fetch(
            """SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
                 AND tablename NOT IN ('schema_migrations', 'legacy_schema_migrations') ORDER BY indexname""")
        constraints = await conn.fetch(
            """SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid) AS definition
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace
                 AND conrelid::regclass::text NOT IN ('schema_migrations', 'legacy_schema_migrations')
               ORDER BY 1, 2""")
        triggers = await conn.fetch(
            "SELECT tgname, pg_get_triggerdef(oid) AS definition FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1")
        storage = await conn.fetch(
            """SELECT attrelid::regclass::text AS table_name, attname, attstorage FROM pg_attribute
               WHERE attrelid = 'document_blobs'::regclass AND attnum > 0 ORDER BY attnum""")
    finally:
        await conn.close()
    return {name: [tuple(row) for row in rows] for name, rows in (
        ("columns", columns), ("indexes", indexes), ("constraints", constraints), ("triggers", triggers),
        ("storage", storage))}


async def single_list_database(url: str, versions: range) -> None:
    """What the single-list runner left behind: its files' SQL applied, their versions recorded."""
    files = sorted(SINGLE_LIST.glob("*.sql"))
    assert [int(path.name[:4]) for path in files] == [1, 2, 3, 4, 5]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """CREATE TABLE schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())""")
        for path in files:
            version = int(path.name[:4])
            if version in versions:
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                       version, path.stem[5:])
    finally:
        await conn.close()


async def test_migrations_apply_once_and_are_idempotent(fresh_database_url: str) -> None:
    assert await migrate_all(fresh_database_url) == all_labels()
    assert await migrate_all(fresh_database_url) == []
    conn = await asyncpg.connect(fresh_database_url)
    try:
        rows = await conn.fetch("SELECT component, version, name FROM schema_migrations ORDER BY component, version")
        tables = {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert sorted(f"{row['component']}/{row['version']:04d}_{row['name']}" for row in rows) == sorted(all_labels())
    assert set().union(*OWNED_TABLES.values()) <= tables


async def test_each_component_creates_only_its_own_tables(fresh_database_url: str) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        for component in MIGRATION_COMPONENTS:
            before = {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
            await migrate(fresh_database_url, [component])
            after = {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
            assert after - before - {"schema_migrations"} == OWNED_TABLES[component], component
        # no foreign key crosses owners
        references = await conn.fetch(
            """SELECT conrelid::regclass::text AS source, confrelid::regclass::text AS target
               FROM pg_constraint WHERE contype = 'f'""")
    finally:
        await conn.close()
    owner = {table: component for component, tables in OWNED_TABLES.items() for table in tables}
    assert references and all(owner[row["source"]] == owner[row["target"]] for row in references)


async def test_concurrent_migrations_apply_each_migration_exactly_once(fresh_database_url: str) -> None:
    results = await asyncio.gather(*(migrate_all(fresh_database_url) for _ in range(6)))
    applied = [label for result in results for label in result]
    assert sorted(applied) == sorted(all_labels())


async def test_a_single_list_database_is_adopted_without_running_anything_again(backing) -> None:
    from tests.conftest import create_database

    upgraded = await create_database(backing.database_url, migrated=False)
    await single_list_database(upgraded, range(1, 6))
    fresh = await create_database(backing.database_url)

    # only what was written since: each adopted statement would fail if run again (CREATE TABLE users …)
    assert await migrate_all(upgraded) == labels_since_the_split()
    assert await migrate_all(upgraded) == []
    assert await schema(upgraded) == await schema(fresh)
    conn = await asyncpg.connect(upgraded)
    try:
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        legacy = await conn.fetch("SELECT version FROM legacy_schema_migrations ORDER BY version")
        for component in MIGRATION_COMPONENTS:
            await require_migrated(conn, component)
    finally:
        await conn.close()
    assert recorded == len(all_labels())
    assert [row["version"] for row in legacy] == [1, 2, 3, 4, 5]


async def test_a_partly_migrated_single_list_database_gets_only_what_it_lacks(backing) -> None:
    from tests.conftest import create_database

    upgraded = await create_database(backing.database_url, migrated=False)
    await single_list_database(upgraded, range(1, 4))  # from before blob storage and error reasons

    applied = await migrate_all(upgraded)  # component by component, each in order
    assert sorted(applied) == sorted(["ingest/0003_blob_storage", "ingest/0004_document_error_reason",
                                      *labels_since_the_split()])
    assert applied.index("ingest/0003_blob_storage") < applied.index("ingest/0004_document_error_reason")
    assert await schema(upgraded) == await schema(await create_database(backing.database_url))


async def test_require_migrated_names_what_is_missing(fresh_database_url: str) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        with pytest.raises(SystemExit) as unmigrated:
            await require_migrated(conn, "chat")
        await migrate(fresh_database_url, ["chat"])
        await require_migrated(conn, "chat")
        with pytest.raises(SystemExit) as behind:
            await require_migrated(conn, "ingest")
        await conn.execute("DELETE FROM schema_migrations WHERE component = 'chat' AND version = 4")
        with pytest.raises(SystemExit) as one_missing:
            await require_migrated(conn, "chat")
    finally:
        await conn.close()
    assert str(unmigrated.value) == (
        "docent: chat: the database schema is behind (missing migrations 0001_conversations, 0002_chat_turns, "
        "0003_history_turn_ids, 0004_memory_sweeps, 0005_memory_refined, 0006_conversation_api_keys); run "
        "`docent migrate`")
    assert "docent: ingest: the database schema is behind" in str(behind.value)
    assert str(one_missing.value) == (
        "docent: chat: the database schema is behind (missing migration 0004_memory_sweeps); run `docent migrate`")
