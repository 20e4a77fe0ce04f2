"""`docent up`: the whole system in one command, on the embedded defaults.

Starts the embedded Postgres/Redis (only for URLs that are unset), applies migrations, starts
the retrieval, ingest, chat and gateway services and the worker as child processes, waits for
their health, prints where everything listens and streams their logs with a prefix. On
Ctrl-C/SIGTERM, or when any child dies, it stops everything it started, in order. Children get
PR_SET_PDEATHSIG, so even a SIGKILLed supervisor leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.auth import jwt_secret
from services.runtime.config import Settings, load_settings
from services.runtime.db import migrate
from services.runtime.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis
from services.runtime.lifecycle import die_with_parent
from services.runtime.logging import configure_logging

START_ORDER = ("retrieval", "ingest", "chat", "worker", "gateway")
GRPC_ROLES = {"ingest": "docent.v1.IngestService", "retrieval": "docent.v1.RetrievalService",
              "chat": "docent.v1.ChatService"}
HEALTH_TIMEOUT_SECONDS = 120


def _say(message: str) -> None:
    print(f"{'docent':>9} | {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=15))
    pump: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.children: dict[str, Child] = {}
        self.env: dict[str, str] = {}
        self.stopping = False

    # backing services ------------------------------------------------------------------------

    def start_backing_services(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        env = {"DOCENT_DATA_DIR": str(settings.data_dir)}
        if not settings.database_url:
            self.postgres = EmbeddedPostgres(settings.data_dir)
            env["DOCENT_DATABASE_URL"] = self.postgres.start()
            _say(f"embedded Postgres ready (data: {self.postgres.pgdata})")
        if not settings.redis_url:
            self.redis = EmbeddedRedis(settings.data_dir)
            env["DOCENT_REDIS_URL"] = self.redis.start()
            _say(f"embedded Redis ready (socket: {self.redis.socket_path})")
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        if "DOCENT_LOG_FORMAT" not in os.environ:
            # children write to a pipe: keep them human-readable unless asked otherwise
            self.env["DOCENT_LOG_FORMAT"] = "console"

    def stop_backing_services(self) -> None:
        if self.redis:
            self.redis.stop()
            self.redis = None
        if self.postgres:
            self.postgres.stop()
            self.postgres = None

    # children -----------------------------------------------------------------------------------

    def _argv(self, role: str) -> list[str]:
        base = [sys.executable, "-m", "services.cli"]
        if role == "worker":
            return [*base, "worker", "--processes", str(self.workers)]
        return [*base, "serve", role]

    async def start_child(self, role: str) -> None:
        child = Child(role, self._argv(role))
        # If the supervisor itself is killed, services stop gracefully (SIGTERM, quick), but the
        # Dramatiq master is killed outright: its graceful stop waits for booting worker processes
        # and can outlast any sensible wait. Leases and the sweeper recover whatever was in flight.
        death_signal = signal.SIGKILL if role == "worker" else signal.SIGTERM
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=self.env, preexec_fn=lambda: die_with_parent(death_signal),
            start_new_session=True,
        )
        child.pump = asyncio.create_task(self._pump(child))
        self.children[role] = child

    async def _pump(self, child: Child) -> None:
        assert child.process and child.process.stdout
        prefix = f"{child.name:>9} | "
        async for raw in child.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            child.tail.append(line)
            sys.stderr.write(prefix + line + "\n")
            sys.stderr.flush()

    async def wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        pending = set(self.children)
        while pending:
            self.raise_if_child_died()
            for role in list(pending):
                if await self._healthy(role):
                    pending.discard(role)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {HEALTH_TIMEOUT_SECONDS}s: {', '.join(sorted(pending))}")
            if pending:
                await asyncio.sleep(0.2)

    async def _healthy(self, role: str) -> bool:
        settings = self.settings
        if role == "worker":
            return True  # its liveness is its process; it has no port
        if role == "gateway":
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    reply = await client.get(f"http://127.0.0.1:{settings.gateway_port}/health")
                return reply.status_code == 200
            except httpx.HTTPError:
                return False
        async with grpc.aio.insecure_channel(settings.target(role)) as channel:  # type: ignore[arg-type]
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=GRPC_ROLES[role]), timeout=1)
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def dead_child(self) -> Child | None:
        for child in self.children.values():
            if child.process and child.process.returncode is not None:
                return child
        return None

    def raise_if_child_died(self) -> None:
        child = self.dead_child()
        if child:
            raise ChildDied(child)

    async def stop_children(self) -> None:
        # reverse start order: the gateway stops taking requests first, retrieval goes last
        for role in reversed(START_ORDER):
            child = self.children.get(role)
            if not child or not child.process or child.process.returncode is not None:
                continue
            child.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), self.settings.grpc_grace_seconds + 20)
            except TimeoutError:
                _say(f"{role} did not stop in time; killing it")
                child.process.kill()
                await child.process.wait()
        for child in self.children.values():
            if child.pump:
                try:
                    await asyncio.wait_for(child.pump, 2)
                except (TimeoutError, asyncio.CancelledError):
                    child.pump.cancel()

    def banner(self) -> str:
        s = self.settings
        host = "127.0.0.1" if s.bind_host in ("0.0.0.0", "::") else s.bind_host
        lines = [
            "Docent is up.",
            f"  web UI + REST   http://{host}:{s.gateway_port}/   (OpenAPI: /docs, health: /health, /ready)",
            f"  gRPC            ingest {host}:{s.ingest_port} · retrieval {host}:{s.retrieval_port}"
            f" · chat {host}:{s.chat_port}   (reflection + grpc.health.v1 on each)",
            f"  metrics         gateway /metrics · ingest :{s.ingest_metrics_port} · retrieval "
            f":{s.retrieval_metrics_port} · chat :{s.chat_metrics_port} · worker :{s.worker_metrics_port}",
            f"  data            {s.data_dir}",
            f"  backing         Postgres: {'embedded' if self.postgres else 'DOCENT_DATABASE_URL'} · "
            f"Redis: {'embedded' if self.redis else 'DOCENT_REDIS_URL'} · vectors: "
            f"{'DOCENT_QDRANT_URL' if s.qdrant_url else 'embedded qdrant-edge'}",
            "  token for grpcurl: docent token --user <id>        stop: Ctrl-C",
        ]
        return "\n".join(lines)


class ChildDied(RuntimeError):
    def __init__(self, child: Child) -> None:
        self.child = child
        code = child.process.returncode if child.process else None
        reason = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        super().__init__(f"{child.name} stopped unexpectedly ({reason})")


async def _run(supervisor: Supervisor) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        url = supervisor.env.get("DOCENT_DATABASE_URL") or supervisor.settings.database_url or ""
        applied = await migrate(url)
        _say(f"migrations: {'applied ' + str(applied) if applied else 'up to date'}")
        for role in START_ORDER:
            await supervisor.start_child(role)
        health = asyncio.create_task(supervisor.wait_healthy())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({health, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if health.done():
            health.result()
            _say(supervisor.banner().replace("\n", f"\n{'docent':>9} | "))
            while not stop.is_set():
                supervisor.raise_if_child_died()
                try:
                    await asyncio.wait_for(stop.wait(), 0.25)
                except TimeoutError:
                    pass
            _say("stopping…")
        else:
            health.cancel()
            _say("interrupted during start-up; stopping…")
    except ChildDied as died:
        await asyncio.sleep(0.2)  # let the pump drain the last lines
        _say(str(died) + "; its last log lines:")
        for line in died.child.tail:
            _say(f"  {died.child.name}: {line}")
        exit_code = 1
    except (RuntimeError, OSError) as error:
        _say(f"start-up failed: {error}")
        exit_code = 1
    finally:
        await supervisor.stop_children()
    return exit_code


def run_supervisor(workers: int | None = None) -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, service="docent")
    jwt_secret(settings)  # create the shared secret once, before the children race for it
    supervisor = Supervisor(settings, workers or settings.worker_processes)
    # Signals during the synchronous start of Postgres/Redis must still stop them.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        supervisor.start_backing_services()
        code = asyncio.run(_run(supervisor))
    except EmbeddedError as error:
        _say(f"start-up failed: {error}")
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        supervisor.stop_backing_services()
    _say("stopped; nothing left running")
    return code
