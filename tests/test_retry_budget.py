"""One owner per retry, one deadline per request: a REST chat under a real `docent up` against an
OpenAI-compatible endpoint that fails (503) or hangs reaches it at most 1 + DOCENT_LLM_MAX_RETRIES
times, answers 503/504 within the request's deadline, and stores nothing (docs/RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from tests.stack import start_up
from tests.test_answerers import fake_llm

MAX_RETRIES = 2
LLM_TIMEOUT = 2.0
GRPC_DEADLINE = 3.0
# the gateway's deadline for a chat: DOCENT_GRPC_DEADLINE_SECONDS + DOCENT_LLM_TIMEOUT_SECONDS
CHAT_DEADLINE = GRPC_DEADLINE + LLM_TIMEOUT


@pytest.fixture(scope="module")
async def llm_stack():
    async with fake_llm() as fake:
        up = start_up({"DOCENT_LLM_BASE_URL": fake.base_url, "DOCENT_LLM_MODEL": "test-model",
                       "DOCENT_LLM_MAX_RETRIES": str(MAX_RETRIES), "DOCENT_LLM_TIMEOUT_SECONDS": str(LLM_TIMEOUT),
                       "DOCENT_GRPC_DEADLINE_SECONDS": str(GRPC_DEADLINE)})
        try:
            await asyncio.to_thread(up.wait_for, "Docent is up.")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{up.ports['gateway']}", timeout=60) as client:
                reply = await client.post("/api/auth/signup", json={
                    "email": f"r-{uuid.uuid4().hex[:8]}@example.com", "username": "retry", "password": "password-123"})
                assert reply.status_code == 201, reply.text
                client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
                yield fake, client
        finally:
            await asyncio.to_thread(up.stop)
            up.kill_everything()


async def _chat(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    reply = await client.post(path, json={"query": "What was the Q3 revenue?"})
    return reply, time.monotonic() - started


@pytest.mark.parametrize("path", ["/api/chat/", "/api/chat/stream"])
async def test_an_llm_answering_503_is_tried_1_plus_max_retries_times(llm_stack, path: str) -> None:
    fake, client = llm_stack
    fake.mode = "error"
    fake.requests.clear()
    reply, seconds = await _chat(client, path)
    assert reply.status_code == 503, reply.text
    assert reply.json()["reason"] == "LLM_UNAVAILABLE"
    # the openai client's own retries are the only ones: no channel or gateway retry multiplies them
    assert len(fake.requests) == 1 + MAX_RETRIES
    assert seconds < CHAT_DEADLINE
    assert (await client.get("/api/chat/conversations")).json()["conversations"] == []


async def test_a_hanging_llm_ends_within_the_request_deadline(llm_stack) -> None:
    fake, client = llm_stack
    fake.mode = "slow"
    fake.delay = 60.0
    fake.requests.clear()
    reply, seconds = await _chat(client, "/api/chat/")
    assert reply.status_code in (503, 504), reply.text
    assert reply.json()["reason"] in ("LLM_TIMEOUT", "DEADLINE_EXCEEDED")
    assert 1 <= len(fake.requests) <= 1 + MAX_RETRIES
    assert seconds < CHAT_DEADLINE + 1.0  # one deadline for the whole request, LLM attempts included
    assert (await client.get("/api/chat/conversations")).json()["conversations"] == []


async def test_the_llm_answers_again_once_it_is_back(llm_stack) -> None:
    fake, client = llm_stack
    fake.mode = "ok"
    fake.requests.clear()
    reply, _ = await _chat(client, "/api/chat/")
    assert reply.status_code == 200, reply.text
    assert len(fake.requests) == 1
    assert len((await client.get("/api/chat/conversations")).json()["conversations"]) == 1
