"""A small REST client of the gateway: the calls a web client makes, nothing internal."""

from __future__ import annotations

import asyncio
import mimetypes
import time
import uuid
from pathlib import Path
from typing import Any

import httpx


class EvalClientError(RuntimeError):
    pass


class RestClient:
    def __init__(self, base_url: str, *, timeout: float = 120) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)
        self._token = ""

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    @property
    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"}

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = await self._http.request(method, path, headers=self._auth, **kwargs)
        if reply.status_code >= 400:
            raise EvalClientError(f"{method} {path} → {reply.status_code}: {reply.text[:300]}")
        return reply.json() if reply.content else None

    async def sign_in(self, email: str = "", password: str = "") -> None:
        """Sign in, signing up first when the account does not exist (a fresh eval user by default)."""
        email = email or f"eval-{uuid.uuid4().hex[:10]}@example.com"
        password = password or uuid.uuid4().hex
        reply = await self._http.post("/api/auth/signin", json={"email": email, "password": password})
        if reply.status_code == 401:
            reply = await self._http.post("/api/auth/signup", json={
                "email": email, "username": email.split("@")[0][:30], "password": password})
        if reply.status_code >= 400:
            raise EvalClientError(f"sign-in as {email} failed: {reply.status_code} {reply.text[:300]}")
        self._token = reply.json()["access_token"]

    async def upload(self, path: Path, filename: str = "") -> str:
        """Upload the file at `path`, named `filename` (by default its own name)."""
        filename = filename or path.name
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        content = await asyncio.to_thread(path.read_bytes)
        body = await self._json("POST", "/api/upload/", files={"file": (filename, content, kind)})
        return body["id"]

    async def documents(self) -> list[dict]:
        """The caller's documents, newest first (GET /api/upload/)."""
        return await self._json("GET", "/api/upload/", params={"limit": 1000})

    async def wait_finished(self, document_ids: list[str], timeout: float = 1800) -> dict[str, dict]:
        """Poll until every document is completed or failed; returns each one's final status."""
        deadline = time.monotonic() + timeout
        pending = set(document_ids)
        done: dict[str, dict] = {}
        while pending:
            for document_id in sorted(pending):
                status = await self._json("GET", f"/api/upload/{document_id}/status")
                if status["status"] in ("completed", "failed"):
                    done[document_id] = status
                    pending.discard(document_id)
            if pending:
                if time.monotonic() > deadline:
                    raise EvalClientError(f"{len(pending)} documents not completed after {timeout:.0f}s")
                await asyncio.sleep(0.5)
        return done

    async def chat(self, query: str, **options: Any) -> tuple[dict, float]:
        """One POST /api/chat/ with explain; returns the body and the client-side latency in ms."""
        body = {"query": query, "explain": True, **{k: v for k, v in options.items() if v is not None}}
        started = time.perf_counter()
        reply = await self._json("POST", "/api/chat/", json=body)
        return reply, (time.perf_counter() - started) * 1000

    async def conversation(self, conversation_id: str) -> dict:
        return await self._json("GET", f"/api/chat/conversations/{conversation_id}")

    async def delete_conversation(self, conversation_id: str) -> None:
        await self._json("DELETE", f"/api/chat/conversations/{conversation_id}")
