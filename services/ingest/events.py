"""Document change notifications: one LISTEN connection per process, fanned out to watchers.

A trigger NOTIFYs 'document_events' with the document id on every change; watchers re-read the
row (the database stays the source of truth) and also poll slowly in case a notification is lost
(e.g. while the listening connection reconnects).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import asyncpg
import structlog

log = structlog.get_logger("docent.ingest.events")
CHANNEL = "document_events"


class DocumentEvents:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._subscribers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._lock = asyncio.Lock()

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            self._conn = await asyncpg.connect(self._dsn)
            await self._conn.add_listener(CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for event in self._subscribers.get(payload, ()):
            event.set()

    async def subscribe(self, document_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._subscribers[document_id].add(event)
        try:
            await self._ensure_listening()
        except (OSError, asyncpg.PostgresError) as error:
            # watchers still poll; notifications resume on the next subscribe
            log.warning("listen_failed", error=type(error).__name__)
        return event

    def unsubscribe(self, document_id: str, event: asyncio.Event) -> None:
        subscribers = self._subscribers.get(document_id)
        if subscribers is not None:
            subscribers.discard(event)
            if not subscribers:
                del self._subscribers[document_id]

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None
