"""What `docent up` supervises: its child processes, the embedded Postgres/Redis, and when to restart them.

A child that dies is restarted after a backoff that doubles with each crash in a row (1 s, 2 s, … up
to `restart_backoff_max_seconds`) and starts over once the child stayed up `restart_healthy_seconds`.
Only a crash loop (`restart_crash_loop` crashes of one role within `restart_crash_window_seconds`)
ends `docent up`: restarting a child that cannot stay up would only hide the cause.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.config import Settings
from services.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from services.runtime.lifecycle import die_with_parent

TAIL_LINES = 15


def exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class RestartState:
    """Crash bookkeeping of one role (times are monotonic seconds)."""

    backoff_max: float
    healthy_after: float
    loop_crashes: int
    loop_window: float
    started_at: float = 0.0
    consecutive: int = 0
    restarts: int = 0
    crashes: collections.deque[float] = field(default_factory=collections.deque)

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartState:
        return cls(settings.restart_backoff_max_seconds, settings.restart_healthy_seconds,
                   settings.restart_crash_loop, settings.restart_crash_window_seconds)

    def crashed(self, now: float) -> float | None:
        """The delay before the next start, or None when this crash completes a crash loop."""
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - self.loop_window:
            self.crashes.popleft()
        if len(self.crashes) >= self.loop_crashes:
            return None
        if now - self.started_at >= self.healthy_after:
            self.consecutive = 0  # it had been up for a while: this is a new incident, not a loop
        delay = min(2.0 ** self.consecutive, self.backoff_max)
        self.consecutive += 1
        return delay


class Managed:
    """One supervised role: start it, see whether it still runs, stop it, show its last lines."""

    name: str

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.restart = RestartState.from_settings(settings)
        self.restart_task: asyncio.Task[None] | None = None
        self.starting = False

    async def start(self) -> None:
        raise NotImplementedError

    def returncode(self) -> int | None:
        """None while it runs (or before it was ever started)."""
        raise NotImplementedError

    def running(self) -> bool:
        raise NotImplementedError

    def tail(self) -> list[str]:
        raise NotImplementedError

    async def stop(self, timeout: float) -> None:
        raise NotImplementedError


class ProcessChild(Managed):
    """A `docent …` child: its output is prefixed with its name and streamed to ours."""

    def __init__(self, name: str, settings: Settings, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(name, settings)
        self.argv = argv
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # If the supervisor itself is killed, services stop gracefully (SIGTERM, quick), but the
        # Dramatiq master is killed outright: its graceful stop waits for booting worker processes
        # and can outlast any sensible wait. Leases and the sweeper recover whatever was in flight.
        death_signal = signal.SIGKILL if self.name == "worker" else signal.SIGTERM
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=self.env, preexec_fn=lambda: die_with_parent(death_signal),
            start_new_session=True,
        )
        self.pump = asyncio.create_task(self._pump(self.process))

    async def _pump(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout
        prefix = f"{self.name:>9} | "
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            sys.stderr.write(prefix + line + "\n")
            sys.stderr.flush()

    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def tail(self) -> list[str]:
        return list(self.lines)

    async def drain(self) -> None:
        """Let the pump pass on the last lines of a child that ended."""
        if self.pump:
            try:
                await asyncio.wait_for(asyncio.shield(self.pump), 2)
            except (TimeoutError, asyncio.CancelledError):
                self.pump.cancel()

    async def stop(self, timeout: float) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                print(f"{'docent':>9} | {self.name} did not stop in time; killing it", file=sys.stderr, flush=True)
                process.kill()
                await process.wait()
        await self.drain()


class EmbeddedChild(Managed):
    """The embedded Postgres or Redis, restarted on the same data and socket, so clients reconnect."""

    def __init__(self, name: str, settings: Settings, server: EmbeddedPostgres | EmbeddedRedis,
                 log_path: Path) -> None:
        super().__init__(name, settings)
        self.server = server
        self.log_path = log_path

    async def start(self) -> None:
        # spawned on the event loop's thread: PR_SET_PDEATHSIG follows the thread that forked,
        # and a pool thread may end before we do
        self.server.spawn()
        await asyncio.to_thread(self.server.wait_ready)

    def returncode(self) -> int | None:
        process = self.server.process
        return process.poll() if process else None

    def running(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process else None

    def tail(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError:
            return []

    async def stop(self, timeout: float) -> None:
        await asyncio.to_thread(self.server.stop, timeout)
