"""Postgres: the asyncpg pool and versioned SQL migrations, per component.

Each component that owns tables keeps its migrations in its own package, as the files
`services/<component>/migrations/NNNN_name.sql`, numbered within the component. The caller
names the components (`docent migrate`, `docent up` and the tests pass all of them; this module
knows no service). They are applied in order, each in its own transaction, under a session
advisory lock so that concurrent runs apply each migration exactly once, and recorded in
`schema_migrations(component, version, name, applied_at)`.

Services do not migrate: at start they call `require_migrated`, which refuses to run on a schema
that is behind.

Databases migrated before migrations were per component have a `schema_migrations` without a
`component` column, holding versions of one list for everything. The first run renames that table
to `legacy_schema_migrations`; a migration whose SQL starts with a `-- legacy-version: N` line was
part of that list's version N, so when N is recorded there it is marked as applied without being
run again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger("docent.db")

# an arbitrary, fixed key: "docent" in ASCII
MIGRATION_LOCK_KEY = 0x646F63656E74
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LEGACY_VERSION = re.compile(r"^-- legacy-version: (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """How logs and `docent migrate` name it: `ingest/0003_blob_storage`."""
        return f"{self.component}/{self.version:04d}_{self.name}"

    @property
    def legacy_version(self) -> int | None:
        """Its version in the single list that databases were migrated with before; None for newer ones."""
        match = _LEGACY_VERSION.search(self.sql)
        return int(match.group(1)) if match else None


def load_migrations(component: str) -> list[Migration]:
    """The component's migrations, in order (from `services/<component>/migrations/`)."""
    folder = resources.files(f"services.{component}") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(component, int(match.group(1)), match.group(2), entry.read_text()))
    if not found:
        raise RuntimeError(f"no migrations found for component {component!r}")
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration versions in {component}: {versions}")
    return found


async def _adopt_single_list(conn: asyncpg.Connection) -> None:
    """Move a single-list `schema_migrations` (no `component` column) out of the way, once."""
    columns = {row["column_name"] for row in await conn.fetch(
        """SELECT column_name FROM information_schema.columns
           WHERE table_schema = current_schema() AND table_name = 'schema_migrations'""")}
    if not columns or "component" in columns:
        return
    async with conn.transaction():
        await conn.execute("ALTER TABLE schema_migrations RENAME TO legacy_schema_migrations")
        # the primary key's index keeps its name: free it for the new table's
        await conn.execute("ALTER INDEX IF EXISTS schema_migrations_pkey RENAME TO legacy_schema_migrations_pkey")
    log.info("migrations_single_list_adopted")


async def _legacy_versions(conn: asyncpg.Connection) -> set[int]:
    if await conn.fetchval("SELECT to_regclass('legacy_schema_migrations')") is None:
        return set()
    return {row["version"] for row in await conn.fetch("SELECT version FROM legacy_schema_migrations")}


async def _applied(conn: asyncpg.Connection, component: str) -> set[int]:
    rows = await conn.fetch("SELECT version FROM schema_migrations WHERE component = $1", component)
    return {row["version"] for row in rows}


async def apply_migrations(conn: asyncpg.Connection, components: Iterable[str]) -> list[str]:
    """Apply the pending migrations of each component, in the order given; returns the labels applied now."""
    plans = [load_migrations(component) for component in components]  # a missing folder fails before any SQL
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await _adopt_single_list(conn)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   component  text NOT NULL,
                   version    integer NOT NULL,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
        )
        legacy = await _legacy_versions(conn)
        for migrations in plans:
            done = await _applied(conn, migrations[0].component)
            for migration in migrations:
                if migration.version in done:
                    continue
                already_there = migration.legacy_version is not None and migration.legacy_version in legacy
                async with conn.transaction():
                    if not already_there:
                        await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                        migration.component, migration.version, migration.name,
                    )
                if already_there:
                    log.info("migration_adopted", migration=migration.label, legacy_version=migration.legacy_version)
                else:
                    applied_now.append(migration.label)
                    log.info("migration_applied", migration=migration.label)
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


async def migrate(dsn: str, components: Iterable[str]) -> list[str]:
    """Connect and apply the components' pending migrations (see `apply_migrations`)."""
    conn = await connect_with_retry(dsn)
    try:
        return await apply_migrations(conn, components)
    finally:
        await conn.close()


async def missing_migrations(conn: asyncpg.Connection | asyncpg.Pool, component: str) -> list[Migration]:
    """The component's migrations that the database has not recorded (all of them on an unmigrated one)."""
    migrations = load_migrations(component)
    has_table = await conn.fetchval(
        """SELECT count(*) = 2 FROM information_schema.columns
           WHERE table_schema = current_schema() AND table_name = 'schema_migrations'
             AND column_name IN ('component', 'version')""")
    if not has_table:
        return migrations
    rows = await conn.fetch("SELECT version FROM schema_migrations WHERE component = $1", component)
    done = {row["version"] for row in rows}
    return [migration for migration in migrations if migration.version not in done]


async def require_migrated(conn: asyncpg.Connection | asyncpg.Pool, component: str) -> None:
    """Refuse to start on a schema that is behind the component's migrations.

    Raises SystemExit with one line naming what is missing. Migrations recorded beyond the ones this
    code knows are fine: a newer release migrated the database and this one still runs during a rollout.
    """
    missing = await missing_migrations(conn, component)
    if missing:
        names = ", ".join(f"{migration.version:04d}_{migration.name}" for migration in missing)
        plural = "s" if len(missing) > 1 else ""
        raise SystemExit(f"docent: {component}: the database schema is behind (missing migration{plural} "
                         f"{names}); run `docent migrate`")


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    """A pool on an already migrated database (`docent migrate`; check with `require_migrated`)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, command_timeout=60)
    assert pool is not None
    return pool


async def open_migrated_pool(dsn: str, components: Iterable[str], *, max_size: int = 10) -> asyncpg.Pool:
    """A pool for a process that reads and writes `components`' tables, after checking their schema is
    current (a process that starts on an older schema stops with one line naming `docent migrate`)."""
    pool = await create_pool(dsn, max_size=max_size)
    try:
        for component in components:
            await require_migrated(pool, component)
    except BaseException:
        await pool.close()
        raise
    return pool


async def ping(pool: asyncpg.Pool) -> bool:
    async with pool.acquire(timeout=2) as conn:
        return await conn.fetchval("SELECT 1") == 1
