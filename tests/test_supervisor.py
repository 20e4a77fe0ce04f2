"""`docent up`: the whole system comes up, answers grpcurl, and never leaves a process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import start_up

GRPCURL = str(Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parent.parent / ".venv")) / "bin" / "grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def stack():
    up = start_up()
    try:
        up.wait_for("Docent is up.")
        up.track_descendants()
        yield up
    finally:
        up.stop()
        up.kill_everything()


def test_every_grpc_port_lists_service_health_and_reflection(stack) -> None:
    for role, service in (("ingest", "docent.v1.IngestService"), ("retrieval", "docent.v1.RetrievalService"),
                          ("chat", "docent.v1.ChatService")):
        result = grpcurl(f"127.0.0.1:{stack.ports[role]}", "list")
        assert result.returncode == 0, result.stderr
        listed = set(result.stdout.split())
        assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
        health = grpcurl("-d", json.dumps({"service": service}), f"127.0.0.1:{stack.ports[role]}",
                         "grpc.health.v1.Health/Check")
        assert json.loads(health.stdout)["status"] == "SERVING"


def test_grpcurl_describe_and_unauthenticated_call(stack) -> None:
    described = grpcurl(f"127.0.0.1:{stack.ports['chat']}", "describe", "docent.v1.ChatService")
    assert "rpc StreamChat ( .docent.v1.StreamChatRequest ) returns ( stream .docent.v1.StreamChatResponse )" \
        in described.stdout
    call = grpcurl("-d", '{"document_id": "x"}', f"127.0.0.1:{stack.ports['ingest']}",
                   "docent.v1.IngestService/GetDocument")
    assert call.returncode != 0
    assert "Unauthenticated" in call.stdout + call.stderr
    assert '"reason":"TOKEN_MISSING"' in (call.stdout + call.stderr).replace(" ", "")


def test_gateway_health_and_ready(stack) -> None:
    base = f"http://127.0.0.1:{stack.ports['gateway']}"
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["upstreams"].values()) == {"SERVING"}
    assert "docent_grpc" in httpx.get(f"http://127.0.0.1:{stack.ports['ingest_metrics']}/metrics").text


def test_ctrl_c_stops_everything() -> None:
    up = start_up()
    try:
        up.wait_for("Docent is up.")
        tracked = up.track_descendants()
        names = " ".join(" ".join(proc.cmdline()) for proc in tracked)
        assert "postgres" in names and "redis-server" in names and "dramatiq" in names
        assert up.stop(signal.SIGINT) == 0
        time.sleep(0.5)
        assert up.survivors() == []
        assert "nothing left running" in up.output()
    finally:
        up.kill_everything()


def test_a_crash_loop_ends_docent_up_with_the_last_log_lines() -> None:
    """One crash is healed (tests/test_self_healing.py); a child that keeps crashing ends `docent up`."""
    up = start_up({"DOCENT_RESTART_CRASH_LOOP": "2"})
    try:
        up.wait_for("Docent is up.")
        os.kill(up.child_pid("serve chat"), signal.SIGKILL)
        up.wait_for("chat restarted", timeout=30)
        up.track_descendants()
        os.kill(up.child_pid("serve chat"), signal.SIGKILL)
        assert up.process.wait(60) == 1
        output = up.output()
        assert "chat stopped unexpectedly (signal SIGKILL); restarting it in 1s" in output
        assert "chat keeps crashing (2 crashes in 120s, last: signal SIGKILL); giving up" in output
        assert "its last log lines" in output and "  chat: " in output
        time.sleep(0.5)
        assert up.survivors() == []
        assert not (up.data_dir / "supervisor.json").exists()
    finally:
        up.kill_everything()


def test_sigkilled_supervisor_leaves_nothing_behind() -> None:
    up = start_up()
    try:
        up.wait_for("Docent is up.")
        up.track_descendants()
        up.process.kill()
        up.process.wait(10)
        deadline = time.monotonic() + 30
        while up.survivors() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert up.survivors() == []
    finally:
        up.kill_everything()


def test_second_start_is_quick_and_keeps_data() -> None:
    first = start_up()
    try:
        first.wait_for("Docent is up.")
        first.track_descendants()
        assert first.stop() == 0
    finally:
        first.kill_everything()
    started = time.monotonic()
    second = start_up(data_dir=first.data_dir)
    try:
        second.wait_for("Docent is up.")
        second.track_descendants()
        assert time.monotonic() - started < 20
        assert "migrations: up to date" in second.output()
        assert httpx.get(f"http://127.0.0.1:{second.ports['gateway']}/health").status_code == 200
    finally:
        second.stop()
        second.kill_everything()
