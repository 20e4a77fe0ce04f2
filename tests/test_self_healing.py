"""`docent up` heals itself: kill -9 each role in turn under a real `docent up`; every other child keeps
serving, the killed one is restarted, and the system answers again (ready, an upload completes, a chat is
answered) within 30 s. Nothing that was acknowledged is lost: every document completes once with the chunk
count of a clean run, every chat turn that got a 200 is stored.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import httpx
import psutil
import pytest

from tests.stack import UpProcess, start_up

RECOVERY_SECONDS = 30
TEXT = ("Docent keeps running. The quarterly revenue of the Acme company was 5 million euros. "
        "The warehouse in Lyon stores spare parts for the blue tractors.\n") * 8
QUESTION = "Where are the spare parts for the blue tractors stored?"
PROBES = {"chat": ("POST", "/api/chat/"), "retrieval": ("POST", "/api/chat/"), "ingest": ("GET", "/api/upload/")}


@pytest.fixture(scope="module")
def up():
    up = start_up({"DOCENT_SWEEP_INTERVAL_SECONDS": "2", "DOCENT_LEASE_SECONDS": "10"})
    try:
        up.wait_for("Docent is up.")
        yield up
    finally:
        up.stop()
        up.kill_everything()


class Client:
    def __init__(self, up: UpProcess) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{up.ports['gateway']}", timeout=30)
        reply = self.http.post("/api/auth/signup", json={
            "email": f"heal-{uuid.uuid4().hex[:8]}@example.com", "username": "healer", "password": "password-123"})
        assert reply.status_code == 201, reply.text
        self.http.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
        self.documents: list[str] = []
        self.turns: list[tuple[str, str]] = []

    def ready(self) -> bool:
        """Every role back (`degraded` is 200 too: the gateway serves what it can while a role restarts)."""
        try:
            reply = self.http.get("/ready", timeout=5)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json()["status"] == "ready"

    def upload(self) -> str | None:
        tag = uuid.uuid4().hex[:8]  # distinct bytes: an identical upload is deduplicated, not processed
        reply = self.http.post("/api/upload/", files={"file": (f"{tag}.txt", f"Note {tag}.\n{TEXT}".encode(),
                                                               "text/plain")})
        if reply.status_code != 202:
            return None
        self.documents.append(reply.json()["id"])
        return reply.json()["id"]

    def completed(self, document_id: str) -> bool:
        status = self.http.get(f"/api/upload/{document_id}/status")
        return status.status_code == 200 and status.json()["status"] == "completed"

    def upload_completes(self, deadline: float) -> bool:
        document_id = self.upload()
        while document_id and time.monotonic() < deadline:
            if self.completed(document_id):
                return True
            time.sleep(0.2)
        return False

    def chat_answers(self) -> bool:
        reply = self.http.post("/api/chat/", json={"query": QUESTION})
        if reply.status_code != 200:
            return False
        body = reply.json()
        self.turns.append((body["conversation_id"], body["answer"]))
        return "Lyon" in body["answer"]


def _children(up: UpProcess) -> list[psutil.Process]:
    return psutil.Process(up.process.pid).children()


def pid_of(up: UpProcess, role: str, timeout: float = 10) -> int:
    """The process to kill for a role: a direct child of `docent up`, or the Dramatiq worker process (waits
    for it: `docent worker` becomes the Dramatiq master by exec, which then forks its workers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _find(up, role)
        except (LookupError, psutil.NoSuchProcess):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _find(up: UpProcess, role: str) -> int:
    if role == "worker process":
        master = _find(up, "worker")
        workers = [proc for proc in psutil.Process(master).children() if "dramatiq" in " ".join(proc.cmdline())]
        if not workers:
            raise LookupError(role)
        return workers[0].pid
    for proc in _children(up):
        command = proc.cmdline()
        line = " ".join(command)
        if ((role == "worker" and "dramatiq" in line) or (role == "sweeper" and "services.sweeper" in line)
                or (role == "redis" and "redis-server" in line)
                or (role == "postgres" and command and command[0].endswith("/postgres"))
                or f"serve {role}" in line):
            return proc.pid
    raise LookupError(role)


def test_every_role_killed_in_turn_comes_back(up: UpProcess) -> None:
    client = Client(up)
    assert client.upload_completes(time.monotonic() + 60)
    assert client.chat_answers()
    clean_chunks = client.http.get(f"/api/upload/{client.documents[0]}/status").json()["chunk_count"]
    recovered: dict[str, float] = {}
    # worker process and master, the gRPC services, the gateway, embedded Redis, embedded Postgres
    roles = ("worker process", "worker", "sweeper", "chat", "gateway", "ingest", "retrieval", "redis", "postgres")
    for role in roles:
        restarted = "worker" if role == "worker process" else role
        before = up.output().count(f"{restarted} stopped unexpectedly")
        assert client.upload()  # in flight when the role dies: it must still complete, once
        os.kill(pid_of(up, role), signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + RECOVERY_SECONDS
        while up.output().count(f"{restarted} stopped unexpectedly") == before:
            assert time.monotonic() < deadline, f"{role}: the supervisor did not notice"
            time.sleep(0.05)
        if role in PROBES:  # while it restarts, a request that needs it gets a 503 with a reason, at once
            method, path = PROBES[role]
            asked = time.monotonic()
            reply = client.http.request(method, path, **({"json": {"query": QUESTION}} if method == "POST" else {}))
            assert (reply.status_code, reply.json()["reason"]) == (503, "UPSTREAM_UNAVAILABLE"), reply.text
            assert time.monotonic() - asked < 2
        if restarted in ("worker", "sweeper"):  # no service's readiness depends on them: 200, and named
            reply = client.http.get("/ready")
            assert reply.status_code == 200 and reply.json()["status"] == "degraded", reply.text
            assert restarted in reply.json()["restarting"], reply.text
        while not client.ready():
            assert time.monotonic() < deadline, f"{role}: /ready not back after {RECOVERY_SECONDS}s"
            time.sleep(0.2)
        while not client.chat_answers():
            assert time.monotonic() < deadline, f"{role}: no chat answer after {RECOVERY_SECONDS}s"
            time.sleep(0.5)
        assert client.upload_completes(deadline), f"{role}: no upload completed in {RECOVERY_SECONDS}s"
        recovered[role] = round(time.monotonic() - killed, 1)
        assert up.process.poll() is None
    print("\nrecovery seconds:", recovered)
    assert "keeps crashing" not in up.output()

    # nothing lost: every document completed once, with the chunks of a clean run (those in flight at a kill
    # may wait for an expired lease or a lost message to be swept); every answered turn stored and indexed
    deadline = time.monotonic() + 60
    while waiting := [document_id for document_id in client.documents if not client.completed(document_id)]:
        assert time.monotonic() < deadline, f"documents in flight at a kill did not complete: {waiting}"
        time.sleep(0.5)
    for document_id in client.documents:
        status = client.http.get(f"/api/upload/{document_id}/status").json()
        assert (status["status"], status["chunk_count"]) == ("completed", clean_chunks), status
    for conversation_id, answer in client.turns:
        stored = client.http.get(f"/api/chat/conversations/{conversation_id}").json()
        assert [turn["answer"] for turn in stored["turns"]] == [answer]
    while not all(turn["memory_indexed"] for conversation_id, _ in client.turns
                  for turn in client.http.get(f"/api/chat/conversations/{conversation_id}").json()["turns"]):
        assert time.monotonic() < deadline, "a stored chat turn was never indexed into memory"
        time.sleep(0.5)
    metrics = httpx.get(f"http://127.0.0.1:{up.ports['supervisor_metrics']}/metrics").text
    for role in ("worker", "sweeper", "chat", "gateway", "ingest", "retrieval", "redis", "postgres"):
        assert f'docent_child_restarts_total{{role="{role}"}}' in metrics
    assert 'docent_child_restarts_total{role="worker"} 2.0' in metrics

    # and Ctrl-C still stops everything, the restarted children and backing servers included
    names = " ".join(" ".join(proc.cmdline()) for proc in up.track_descendants())
    assert "postgres" in names and "redis-server" in names and "services.sweeper" in names
    assert up.stop(signal.SIGINT) == 0
    time.sleep(0.5)
    assert up.survivors() == []
