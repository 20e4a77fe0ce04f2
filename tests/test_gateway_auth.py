"""The gateway in this process under uvicorn, with real Postgres: accounts, tokens, CORS, ops endpoints,
the UI files, and what clients see when an upstream service is down or hangs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from services.gateway.app import create_app
from services.runtime.auth import mint_token
from tests.conftest import TEST_SECRET, free_port, make_settings

PASSWORD = "correct horse battery"


@contextlib.asynccontextmanager
async def serve_gateway(settings, app=None) -> AsyncIterator[str]:
    """The gateway app (`create_app(settings)` unless given) under uvicorn on a free port; yields its URL."""
    port = free_port()
    config = uvicorn.Config(app or create_app(settings, TEST_SECRET), host="127.0.0.1", port=port, log_config=None,
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway exited during start-up")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@contextlib.contextmanager
def silent_upstream():
    """A TCP port that accepts connections and never answers: a hung upstream service."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.fixture(scope="module")
async def database_url(backing) -> str:
    from tests.conftest import create_database

    return await create_database(backing.database_url)


@pytest.fixture(scope="module")
async def gateway(database_url):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = make_settings(database_url=database_url, ingest_target=dead, retrieval_target=dead, chat_target=dead,
                             max_upload_bytes=100_000)
    async with serve_gateway(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


async def signup(client: httpx.AsyncClient, email: str | None = None, username: str = "Ada") -> dict:
    reply = await client.post("/api/auth/signup", json={"email": email or new_email(), "username": username,
                                                        "password": PASSWORD})
    assert reply.status_code == 201, reply.text
    return reply.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_signup_signin_me_logout(gateway) -> None:
    email = new_email()
    created = await signup(gateway, email, "Ada Lovelace")
    assert created["token_type"] == "bearer" and created["access_token"]
    user = created["user"]
    assert set(user) == {"id", "email", "username", "created_at"}
    assert (user["email"], user["username"]) == (email, "Ada Lovelace")
    uuid.UUID(user["id"])

    signed_in = await gateway.post("/api/auth/signin", json={"email": email.upper(), "password": PASSWORD})
    assert signed_in.status_code == 200
    body = signed_in.json()
    assert body["user"] == user and body["token_type"] == "bearer"

    me = await gateway.get("/api/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json() == user

    out = await gateway.post("/api/auth/logout", headers=bearer(body["access_token"]))
    assert out.status_code == 200 and out.json() == {"message": "Successfully logged out"}
    revoked = await gateway.get("/api/auth/me", headers=bearer(body["access_token"]))
    assert revoked.status_code == 401 and revoked.json()["detail"] == "Token revoked"
    # logout ends that token only
    assert (await gateway.get("/api/auth/me", headers=bearer(created["access_token"]))).status_code == 200


async def test_duplicate_email_is_409_whatever_its_case(gateway) -> None:
    email = new_email()
    await signup(gateway, email)
    again = await gateway.post("/api/auth/signup", json={"email": email.upper(), "username": "x", "password": PASSWORD})
    assert again.status_code == 409
    assert again.json() == {"detail": "Email already registered", "reason": "EMAIL_TAKEN"}


async def test_concurrent_signups_with_one_email_create_one_account(gateway) -> None:
    email = new_email()
    replies = await asyncio.gather(*(gateway.post("/api/auth/signup", json={
        "email": email, "username": f"u{i}", "password": PASSWORD}) for i in range(4)))
    assert sorted(reply.status_code for reply in replies) == [201, 409, 409, 409]


@pytest.mark.parametrize("body", [
    {"email": "not-an-email", "username": "a", "password": PASSWORD},
    {"email": "a@example.com", "username": "a", "password": "short"},
    {"email": "a@example.com", "username": "   ", "password": PASSWORD},
    {"email": "a@example.com", "password": PASSWORD},
])
async def test_signup_validation_is_422_with_field_errors(gateway, body) -> None:
    reply = await gateway.post("/api/auth/signup", json=body)
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body"


async def test_bad_credentials_are_401_without_saying_which(gateway) -> None:
    email = new_email()
    await signup(gateway, email)
    wrong_password = await gateway.post("/api/auth/signin", json={"email": email, "password": "nope-nope"})
    unknown = await gateway.post("/api/auth/signin", json={"email": new_email(), "password": PASSWORD})
    for reply in (wrong_password, unknown):
        assert reply.status_code == 401
        assert reply.json() == {"detail": "Incorrect email or password", "reason": "BAD_CREDENTIALS"}
        assert reply.headers["www-authenticate"] == "Bearer"


async def test_signin_is_rate_limited_per_account(gateway) -> None:
    email, other = new_email(), new_email()
    await signup(gateway, email)
    await signup(gateway, other)
    for _ in range(5):
        failed = await gateway.post("/api/auth/signin", json={"email": email, "password": "wrong-pass"})
        assert failed.status_code == 401
    blocked = await gateway.post("/api/auth/signin", json={"email": email, "password": PASSWORD})
    assert blocked.status_code == 429  # even the right password, until the window passes
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert blocked.json()["reason"] == "SIGNIN_RATE_LIMITED"
    assert (await gateway.post("/api/auth/signin", json={"email": other, "password": PASSWORD})).status_code == 200


async def test_signin_limit_holds_across_gateway_replicas(database_url, backing) -> None:
    """Two gateways sharing Redis: 5 failures in all, not 5 per replica."""
    dead = f"127.0.0.1:{free_port()}"
    settings = make_settings(database_url=database_url, ingest_target=dead, chat_target=dead,
                             redis_url=backing.redis_url)
    async with serve_gateway(settings) as first_url, serve_gateway(settings) as second_url, \
            httpx.AsyncClient(base_url=first_url, timeout=30) as first, \
            httpx.AsyncClient(base_url=second_url, timeout=30) as second:
        email = new_email()
        await signup(first, email)
        for replica in (first, second, first, second, first):
            failed = await replica.post("/api/auth/signin", json={"email": email, "password": "wrong-pass"})
            assert failed.status_code == 401
        for replica in (first, second):
            blocked = await replica.post("/api/auth/signin", json={"email": email, "password": PASSWORD})
            assert blocked.status_code == 429 and blocked.json()["reason"] == "SIGNIN_RATE_LIMITED"
        other = new_email()
        await signup(second, other)
        assert (await first.post("/api/auth/signin", json={"email": other, "password": PASSWORD})).status_code == 200


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_protected_routes_refuse_bad_tokens(gateway) -> None:
    user = (await signup(gateway))["user"]
    good = mint_token(TEST_SECRET, user["id"], 600)
    header, _payload, signature = good.split(".")
    now = int(time.time())
    claims = {"sub": user["id"], "iss": "docent", "iat": now, "exp": now + 600, "jti": "x"}
    cases = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {good}"},
        "garbage": bearer("not.a.token"),
        "expired": bearer(mint_token(TEST_SECRET, user["id"], -5)),
        "other secret": bearer(mint_token("another-secret-" + "y" * 40, user["id"], 600)),
        "tampered": bearer(f"{header}.{_b64({**claims, 'sub': str(uuid.uuid4())})}.{signature}"),
        "alg none": bearer(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."),
    }
    routes = [("GET", "/api/auth/me"), ("POST", "/api/auth/logout"), ("GET", "/api/upload/"),
              ("GET", f"/api/upload/{uuid.uuid4()}/status"), ("DELETE", f"/api/upload/{uuid.uuid4()}"),
              ("GET", f"/api/upload/{uuid.uuid4()}/events"), ("GET", "/api/chat/conversations")]
    for name, headers in cases.items():
        for method, path in routes:
            reply = await gateway.request(method, path, headers=headers)
            assert reply.status_code == 401, (name, path, reply.text)
            assert reply.headers["www-authenticate"] == "Bearer"
            assert isinstance(reply.json()["detail"], str)
    chat = await gateway.post("/api/chat/", json={"query": "hi"}, headers=cases["expired"])
    assert chat.status_code == 401 and chat.json()["detail"] == "Token expired"
    upload = await gateway.post("/api/upload/", files={"file": ("a.txt", b"hello")}, headers=cases["alg none"])
    assert upload.status_code == 401 and upload.json()["detail"] == "Invalid token"


async def test_upstream_down_is_503(gateway) -> None:
    token = (await signup(gateway))["access_token"]
    down = await gateway.get("/api/upload/", headers=bearer(token))
    assert down.status_code == 503
    assert down.json()["detail"] == "the ingest service is unavailable (restarting?); try again shortly"
    assert down.json()["reason"] == "UPSTREAM_UNAVAILABLE" and "request_id" in down.json()
    assert down.headers["retry-after"] == "2"
    chat = await gateway.post("/api/chat/stream", json={"query": "hello"}, headers=bearer(token))
    assert chat.status_code == 503  # a stream that cannot start is a plain HTTP error, not a 200 stream
    ready = await gateway.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["upstreams"]["ingest"] == "UNAVAILABLE"
    assert ready.json()["upstreams"]["database"] == "SERVING"
    assert "retrieval" not in ready.json()["upstreams"]  # the gateway never calls it: not its readiness


async def test_hung_upstream_is_504_at_the_deadline(database_url) -> None:
    with silent_upstream() as hung:
        settings = make_settings(database_url=database_url, ingest_target=hung, retrieval_target=hung,
                                 chat_target=hung, grpc_deadline_seconds=0.5, llm_timeout_seconds=0.5)
        async with serve_gateway(settings) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            token = (await signup(client))["access_token"]
            started = time.monotonic()
            reply = await client.post("/api/chat/", json={"query": "hello"}, headers=bearer(token))
            assert reply.status_code == 504 and reply.json()["detail"] == "upstream deadline exceeded"
            assert time.monotonic() - started < 5
            listing = await client.get("/api/upload/", headers=bearer(token))
            assert listing.status_code == 504


async def test_oversize_upload_is_413_before_the_body_is_read(gateway) -> None:
    token = (await signup(gateway))["access_token"]
    reply = await gateway.post("/api/upload/", files={"file": ("big.txt", b"x" * 300_000)},
                               headers={**bearer(token), "Origin": "http://localhost:5173"})
    assert reply.status_code == 413
    assert reply.json()["reason"] == "FILE_TOO_LARGE"
    assert reply.headers["access-control-allow-origin"] == "http://localhost:5173"


async def test_cors_preflight_from_the_seed_client(gateway) -> None:
    for path, method in (("/api/upload/", "POST"), ("/api/chat/", "POST"), ("/api/auth/signin", "POST")):
        reply = await gateway.options(path, headers={
            "Origin": "http://localhost:5173", "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert reply.status_code == 200, path
        assert reply.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert method in reply.headers["access-control-allow-methods"]
        assert "authorization" in reply.headers["access-control-allow-headers"].lower()
    stranger = await gateway.options("/api/chat/", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in stranger.headers
    simple = await gateway.get("/health", headers={"Origin": "http://localhost:3000"})
    assert simple.headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_ops_docs_and_ui(gateway) -> None:
    assert (await gateway.get("/health")).json() == {"status": "ok"}
    request_id = (await gateway.get("/health", headers={"X-Request-ID": "trace-me"})).headers["x-request-id"]
    assert request_id == "trace-me"
    spec = (await gateway.get("/openapi.json")).json()
    for path in ("/api/auth/signup", "/api/auth/signin", "/api/auth/me", "/api/auth/logout", "/api/upload/",
                 "/api/upload/{document_id}/status", "/api/upload/{document_id}", "/api/upload/{document_id}/events",
                 "/api/chat/", "/api/chat/stream", "/api/chat/conversations",
                 "/api/chat/conversations/{conversation_id}"):
        assert path in spec["paths"], path
    assert "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()
    docs = await gateway.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    metrics = (await gateway.get("/metrics")).text
    assert 'docent_http_requests_total{method="GET",route="/health",status="200"}' in metrics
    page = await gateway.get("/")
    assert page.status_code == 200 and '<script type="module" src="/js/app.js">' in page.text
    script = await gateway.get("/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    missing = await gateway.get("/api/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
