"""Shared fixtures: real embedded Postgres + Redis for the session, free ports, in-process services.

Everything binds free ports and lives in its own temp data dir, so the suite runs beside a
`make run` in progress and never touches the machine's own Postgres/Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runner import migrate_all
from services.runtime.auth import mint_token
from services.runtime.config import Settings
from services.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from services.runtime.grpc_server import Service, ServiceDefinition, serve
from services.runtime.ports import unused_port

TEST_SECRET = "test-secret-" + "x" * 40
REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(__file__).resolve().parent / "data"

# Tests must not pick up a developer's .env or DOCENT_* environment.
for _name in [name for name in os.environ if name.startswith("DOCENT_")]:
    del os.environ[_name]


def free_port() -> int:
    return unused_port()


def make_data_dir(prefix: str = "docent-test-") -> Path:
    # /tmp and mode 0755: as root, embedded Postgres runs as another user and must reach it
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class Backing:
    database_url: str
    redis_url: str
    data_dir: Path


@pytest.fixture(scope="session")
def backing() -> Iterator[Backing]:
    data_dir = make_data_dir("docent-backing-")
    postgres = EmbeddedPostgres(data_dir)
    redis_server = EmbeddedRedis(data_dir)
    try:
        database_url = postgres.start()
        redis_url = redis_server.start()
        # services do not migrate at start: the shared database gets its schema here, once
        asyncio.run(migrate_all(database_url))
        yield Backing(database_url, redis_url, data_dir)
    finally:
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def create_database(admin_url: str, *, migrated: bool = True) -> str:
    """A new database on the embedded server, with every component's migrations unless `migrated` is
    False (an empty one); returns its URL."""
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin_url.replace("/docent?", f"/{name}?")
    if migrated:
        await migrate_all(url)
    return url


@pytest.fixture
async def fresh_database_url(backing: Backing) -> str:
    """An empty database: no schema, not even `schema_migrations`."""
    return await create_database(backing.database_url, migrated=False)


def make_settings(backing: Backing | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": make_data_dir(),
        "jwt_secret": TEST_SECRET,
        "log_format": "json",
        "grpc_grace_seconds": 1.0,
        "ingest_metrics_port": 0, "retrieval_metrics_port": 0, "chat_metrics_port": 0,
        "worker_metrics_port": 0,
        # the `embedder` fixture's model, shared with the services a test starts (and quicker than the
        # default multilingual-e5-small, which tests/test_embedder_e5.py runs end to end)
        "embedding_model": "all-MiniLM-L6-v2",
    }
    if backing:
        values.update(database_url=backing.database_url, redis_url=backing.redis_url)
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def token(user_id: str, ttl: int = 3600) -> str:
    return mint_token(TEST_SECRET, user_id, ttl)


def auth(user_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(user_id)}"),)


class Built:
    """Keeps the service a definition builds, for tests that look inside it (its pool, its store)."""

    def __init__(self, definition: ServiceDefinition) -> None:
        self._build = definition.build
        self.definition = dataclasses.replace(definition, build=self._capture)
        self.service: Any = None

    async def _capture(self) -> Service:
        self.service = await self._build()
        return self.service


@contextlib.asynccontextmanager
async def running_service(definition: ServiceDefinition | Built, settings: Settings, *, ready_interval: float = 0.2,
                          wait_serving: bool = True, port: int = 0, **serve_options: Any) -> AsyncIterator[str]:
    """Build and serve `definition` on a loopback port (a free one by default) in this process; yields its
    target address."""
    if isinstance(definition, Built):
        definition = definition.definition
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(
        definition, settings, port=port, jwt_secret=TEST_SECRET, ready_interval=ready_interval,
        on_bound=lambda port: bound.set_result(port), stop_event=stop, **serve_options,
    ))
    done, _ = await asyncio.wait({task, bound}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    target = f"127.0.0.1:{bound.result()}"
    try:
        if wait_serving:
            await wait_for_serving(target, definition.service_names[0])
        yield target
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_for_serving(target: str, service: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{service} at {target} not SERVING after {timeout}s")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def embedder():
    from services.runtime.embeddings import LocalEmbedder

    return LocalEmbedder(batch_size=8)
