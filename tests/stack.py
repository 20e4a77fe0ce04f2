"""Run `docent up` as a real subprocess on free ports and its own data dir (used by system tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.conftest import REPO, free_port, make_data_dir


@dataclass
class UpProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    ports: dict[str, int]
    data_dir: Path
    tracked: list[psutil.Process] = field(default_factory=list)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"docent up exited ({self.process.returncode}):\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen after {timeout}s:\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def track_descendants(self) -> list[psutil.Process]:
        """Every process started on our behalf: children, their children, postgres, redis."""
        self.tracked = psutil.Process(self.process.pid).children(recursive=True)
        return self.tracked

    def child_pid(self, role: str) -> int:
        for proc in psutil.Process(self.process.pid).children():
            if role in " ".join(proc.cmdline()):
                return proc.pid
        raise LookupError(role)

    def survivors(self) -> list[psutil.Process]:
        alive = []
        for proc in self.tracked:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        return alive

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill_everything(self) -> None:
        for proc in [*self.tracked, psutil.Process(self.process.pid)] if self.process.poll() is None else self.tracked:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def start_up(extra_env: dict[str, str] | None = None, data_dir: Path | None = None) -> UpProcess:
    data_dir = data_dir or make_data_dir("docent-up-")
    ports = {name: free_port() for name in (
        "gateway", "ingest", "retrieval", "chat",
        "ingest_metrics", "retrieval_metrics", "chat_metrics", "worker_metrics", "supervisor_metrics")}
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCENT_")}
    env.update({f"DOCENT_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.update({"DOCENT_DATA_DIR": str(data_dir), "DOCENT_GRPC_GRACE_SECONDS": "2", "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    log_path = data_dir / "up.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], cwd=REPO, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return UpProcess(process, log_path, env, ports, data_dir)
