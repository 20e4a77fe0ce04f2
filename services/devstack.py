"""A throwaway Docent: `docent up` in a temporary data dir on free ports, for `docent eval` and `docent bench`.

It is the real system (embedded Postgres/Redis, the four services, workers) started the way a
user starts it, so what is measured is what a user gets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.auth import jwt_secret, mint_token
from services.runtime.config import Settings
from services.runtime.ports import unused_port

PORTS = ("gateway", "ingest", "retrieval", "chat", "ingest_metrics", "retrieval_metrics", "chat_metrics",
         "worker_metrics", "supervisor_metrics")


@dataclass
class DevStack:
    workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="docent-stack-")))
    ports: dict[str, int] = field(default_factory=lambda: {name: unused_port() for name in PORTS})
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "up.log"

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def settings(self) -> Settings:
        return Settings(_env_file=None, data_dir=self.data_dir)  # type: ignore[call-arg]

    def token(self, user_id: str, ttl: int = 24 * 3600) -> str:
        return mint_token(jwt_secret(self.settings()), user_id, ttl)

    def start(self, timeout: float = 180) -> DevStack:
        self.data_dir.chmod(0o755)  # as root, embedded Postgres runs as another user and must reach it
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCENT_")}
        env.update({f"DOCENT_{name.upper()}_PORT": str(port) for name, port in self.ports.items()})
        env.update({"DOCENT_DATA_DIR": str(self.data_dir), "DOCENT_LOG_FORMAT": "json",
                    "DOCENT_GRPC_GRACE_SECONDS": "2", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "up", "--workers", str(self.workers)], env=env,
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while "Docent is up." not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.output()[-3000:]
                self.stop()
                raise RuntimeError(f"docent up did not come up:\n{tail}")
            time.sleep(0.2)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pids(self) -> list[int]:
        """The supervisor and everything it started (for RSS sampling)."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return []
        root = psutil.Process(self.process.pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
