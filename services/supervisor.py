"""`docent up`: the whole system in one command, on the embedded defaults.

Starts the embedded Postgres/Redis (only for URLs that are unset), applies migrations, starts
the retrieval, ingest, chat and gateway services, the worker and the sweeper as child processes,
waits for their health, prints where everything listens and streams their logs with a prefix.

Once up, it heals itself: a child that dies, embedded Postgres and Redis included, is restarted
with backoff while every other child keeps serving (services/children.py has the policy); only a
crash loop ends `docent up`, with that child's last log lines. A child that dies before the system
was ever up is a start-up failure and stops everything at once. The state of every role is in
<data_dir>/supervisor.json (the gateway's /ready shows it) and restarts are counted in
docent_child_restarts_total on the supervisor's metrics port. On Ctrl-C/SIGTERM it stops
everything it started, in order. Children get PR_SET_PDEATHSIG, so even a SIGKILLed supervisor
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time

import grpc
import httpx
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.children import EmbeddedChild, Managed, ProcessChild, exit_reason
from services.runner import migrate_all
from services.runtime import metrics
from services.runtime.auth import jwt_secret
from services.runtime.config import Settings, load_settings
from services.runtime.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis
from services.runtime.logging import configure_logging
from services.runtime.names import GRPC_SERVICES

START_ORDER = ("retrieval", "ingest", "chat", "worker", "sweeper", "gateway")
HEALTH_TIMEOUT_SECONDS = 120
STATUS_FILE = "supervisor.json"
log = structlog.get_logger("docent.supervisor")


def _say(message: str) -> None:
    print(f"{'docent':>9} | {message}", file=sys.stderr, flush=True)


class ChildDied(RuntimeError):
    def __init__(self, child: Managed, loop: bool = False, reason: str = "") -> None:
        self.child = child
        reason = reason or exit_reason(child.returncode())
        if loop:
            state = child.restart
            message = (f"{child.name} keeps crashing ({len(state.crashes)} crashes in "
                       f"{state.loop_window:.0f}s, last: {reason}); giving up")
        else:
            message = f"{child.name} stopped unexpectedly ({reason})"
        super().__init__(message)


class Supervisor:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.backing: dict[str, EmbeddedChild] = {}
        self.children: dict[str, ProcessChild] = {}
        self.env: dict[str, str] = {}
        self.stopping = False
        self.up = False
        self.gave_up: ChildDied | None = None
        self.status_path = settings.data_dir / STATUS_FILE

    # backing services (synchronous: before the event loop) ----------------------------------------

    def start_backing_services(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        env = {"DOCENT_DATA_DIR": str(settings.data_dir)}
        if not settings.database_url:
            self.postgres = EmbeddedPostgres(settings.data_dir)
            self.backing["postgres"] = EmbeddedChild("postgres", settings, self.postgres,
                                                     settings.data_dir / "postgres.log")
            env["DOCENT_DATABASE_URL"] = self.postgres.start()
            _say(f"embedded Postgres ready (data: {self.postgres.pgdata})")
        if not settings.redis_url:
            self.redis = EmbeddedRedis(settings.data_dir)
            self.backing["redis"] = EmbeddedChild("redis", settings, self.redis, settings.data_dir / "redis.log")
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
        if role == "sweeper":
            return [sys.executable, "-m", "services.sweeper"]
        base = [sys.executable, "-m", "services.cli"]
        if role == "worker":
            return [*base, "worker", "--processes", str(self.workers)]
        return [*base, "serve", role]

    async def start_child(self, role: str) -> None:
        env = self.env
        if role == "worker":
            env = {**env, "DOCENT_WORKER_SWEEPER": "false"}  # the sweeper is a child of its own here
        child = ProcessChild(role, self.settings, self._argv(role), env)
        child.restart.started_at = time.monotonic()
        await child.start()
        self.children[role] = child

    def managed(self) -> list[Managed]:
        return [*self.backing.values(), *self.children.values()]

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
        if role in ("worker", "sweeper"):
            return True  # their liveness is their process; they have no port
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
                    health_pb2.HealthCheckRequest(service=GRPC_SERVICES[role]), timeout=1)
            except grpc.aio.AioRpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def dead(self) -> list[Managed]:
        return [child for child in self.managed()
                if child.restart_task is None and child.returncode() is not None]

    def raise_if_child_died(self) -> None:
        for child in self.dead():
            raise ChildDied(child)

    # healing ------------------------------------------------------------------------------------

    async def heal(self) -> None:
        """Schedule a restart for every role that died; a crash loop ends `docent up`."""
        for child in self.dead():
            if isinstance(child, ProcessChild):
                await child.drain()
            self.crashed(child, exit_reason(child.returncode()))
        if self.gave_up:
            raise self.gave_up

    def crashed(self, child: Managed, reason: str) -> None:
        delay = child.restart.crashed(time.monotonic())
        if delay is None:
            self.gave_up = self.gave_up or ChildDied(child, loop=True, reason=reason)
            return
        child.restart.restarts += 1
        child.restart_task = asyncio.create_task(self._restart(child, delay))
        self.write_status()  # before the message: whoever reads it finds /ready saying so already
        metrics.CHILD_RESTARTS.labels(child.name).inc()
        log.warning("child_restart", role=child.name, reason=reason, delay_seconds=delay,
                    restarts=child.restart.restarts)
        _say(f"{child.name} stopped unexpectedly ({reason}); restarting it in {delay:.0f}s "
             f"(restart {child.restart.restarts}); everything else keeps running")

    async def _restart(self, child: Managed, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.stopping:
            return
        child.restart.started_at = time.monotonic()
        child.starting = True  # from here on, stop_children waits for the start instead of cancelling it
        try:
            await child.start()
        except (EmbeddedError, OSError) as error:
            log.warning("child_restart_failed", role=child.name, error=str(error)[:300])
            child.restart_task = None
            if not self.stopping:
                self.crashed(child, f"did not start: {str(error)[:200]}")  # like any crash: backoff, loop
            return
        finally:
            child.starting = False
        child.restart_task = None
        log.info("child_restarted", role=child.name, pid=getattr(child, "pid", None))
        _say(f"{child.name} restarted")
        self.write_status()

    def write_status(self) -> None:
        """<data_dir>/supervisor.json: what runs and what restarts, for the gateway's /ready."""
        roles = {}
        for child in self.managed():
            state = "restarting" if child.restart_task is not None or not child.running() else "running"
            roles[child.name] = {"state": state, "restarts": child.restart.restarts}
        body = {"pid": os.getpid(), "up": self.up, "roles": roles}
        temporary = self.status_path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(body))
            temporary.replace(self.status_path)
        except OSError as error:
            log.warning("status_file_failed", error=str(error))

    def remove_status(self) -> None:
        with contextlib.suppress(OSError):
            self.status_path.unlink()

    async def stop_children(self) -> None:
        self.stopping = True
        for child in self.managed():
            task = child.restart_task
            if task is not None:
                if not child.starting:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # reverse start order: the gateway stops taking requests first, retrieval goes last
        for role in reversed(START_ORDER):
            child = self.children.get(role)
            if child:
                await child.stop(self.settings.grpc_grace_seconds + 20)

    def banner(self) -> str:
        s = self.settings
        host = "127.0.0.1" if s.bind_host in ("0.0.0.0", "::") else s.bind_host
        lines = [
            "Docent is up.",
            f"  web UI + REST   http://{host}:{s.gateway_port}/   (OpenAPI: /docs, health: /health, /ready)",
            f"  gRPC            ingest {host}:{s.ingest_port} · retrieval {host}:{s.retrieval_port}"
            f" · chat {host}:{s.chat_port}   (reflection + grpc.health.v1 on each)",
            f"  metrics         gateway /metrics · ingest :{s.ingest_metrics_port} · retrieval "
            f":{s.retrieval_metrics_port} · chat :{s.chat_metrics_port} · worker :{s.worker_metrics_port}"
            f" · docent up :{s.supervisor_metrics_port}",
            f"  data            {s.data_dir}",
            f"  backing         Postgres: {'embedded' if self.postgres else 'DOCENT_DATABASE_URL'} · "
            f"Redis: {'embedded' if self.redis else 'DOCENT_REDIS_URL'} · vectors: "
            f"{'DOCENT_QDRANT_URL' if s.qdrant_url else 'embedded qdrant-edge'}",
            "  a child that dies is restarted; token for grpcurl: docent token --user <id>        stop: Ctrl-C",
        ]
        return "\n".join(lines)

    def start_metrics(self) -> None:
        port = self.settings.supervisor_metrics_port
        if not port:
            return
        try:
            metrics.start_metrics_server(port, self.settings.bind_host)
        except OSError:
            log.warning("metrics_port_busy", port=port)  # restarts are still logged


async def _run(supervisor: Supervisor) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        url = supervisor.env.get("DOCENT_DATABASE_URL") or supervisor.settings.database_url or ""
        applied = await migrate_all(url)
        _say(f"migrations: {'applied ' + ', '.join(applied) if applied else 'up to date'}")
        for role in START_ORDER:
            await supervisor.start_child(role)
        supervisor.write_status()
        health = asyncio.create_task(supervisor.wait_healthy())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({health, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if health.done():
            health.result()
            supervisor.up = True
            supervisor.start_metrics()
            supervisor.write_status()
            _say(supervisor.banner().replace("\n", f"\n{'docent':>9} | "))
            while not stop.is_set():
                await supervisor.heal()
                try:
                    await asyncio.wait_for(stop.wait(), 0.25)
                except TimeoutError:
                    pass
            _say("stopping…")
        else:
            health.cancel()
            _say("interrupted during start-up; stopping…")
    except ChildDied as died:
        if isinstance(died.child, ProcessChild):
            await died.child.drain()
        _say(str(died) + "; its last log lines:")
        for line in died.child.tail():
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
        supervisor.remove_status()
        supervisor.stop_backing_services()
    _say("stopped; nothing left running")
    return code
