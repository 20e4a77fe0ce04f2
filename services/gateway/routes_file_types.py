"""GET /api/file-types: the file types uploads may have, from the ingest service's format registry.

The gateway cannot import the ingest code (tests/test_import_graph.py), so it asks IngestService.ListFileTypes.
The web UI builds its file picker (`accept`, the hint under it) from this answer.

Authenticated like the document routes: the RPC is authenticated like every RPC, so the caller's token is
what the gateway forwards, and only a signed-in user sees the upload panel. The answer is the same for every
user and changes only when the ingest service is redeployed, so the gateway keeps it for CACHE_SECONDS: a
page load then costs no gRPC call (a failed call is not kept; the next request asks again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from docent.v1 import ingest_pb2
from services.gateway.accounts import CallerDep, StateDep
from services.gateway.errors import INTERNAL, UNAUTHORIZED, UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE, error_responses
from services.gateway.schemas import FileTypesOut

router = APIRouter(prefix="/api", tags=["documents"])
CACHE_SECONDS = 60.0

_ERRORS = error_responses({401: UNAUTHORIZED, 500: INTERNAL, 503: UPSTREAM_UNAVAILABLE, 504: UPSTREAM_TIMEOUT})


class FileTypesCache:
    """The last answer for `ttl` seconds; concurrent misses wait for one call instead of each making theirs."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._value: FileTypesOut | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> FileTypesOut | None:
        return self._value if self._value is not None and self._clock() < self._expires else None

    async def get(self, fetch: Callable[[], Awaitable[FileTypesOut]]) -> FileTypesOut:
        if (value := self._fresh()) is not None:
            return value
        async with self._lock:
            if (value := self._fresh()) is not None:
                return value
            value = await fetch()  # raises: nothing is kept
            self._value, self._expires = value, self._clock() + self.ttl
            return value


def file_types_cache(request: Request) -> FileTypesCache:
    """One cache per app (created on first use: the app state is built by the lifespan, not here)."""
    cache = getattr(request.app.state, "file_types_cache", None)
    if cache is None:
        cache = request.app.state.file_types_cache = FileTypesCache(CACHE_SECONDS)
    return cache


CacheDep = Annotated[FileTypesCache, Depends(file_types_cache)]


@router.get("/file-types", response_model=FileTypesOut, operation_id="listFileTypes", responses=_ERRORS)
async def list_file_types(caller: CallerDep, state: StateDep, cache: CacheDep, response: Response) -> FileTypesOut:
    """The file types an upload may have (MIME type, label, extensions with their dot), in the registry's order."""

    async def fetch() -> FileTypesOut:
        reply = await state.ingest.ListFileTypes(ingest_pb2.ListFileTypesRequest(), **state.options(caller))
        return FileTypesOut.from_proto(reply)

    body = await cache.get(fetch)
    response.headers["Cache-Control"] = f"private, max-age={int(CACHE_SECONDS)}"
    return body
