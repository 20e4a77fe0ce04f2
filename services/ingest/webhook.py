"""Per-upload webhooks: POSTed, HMAC-signed, when a document reaches a terminal state.

Best effort with a few quick retries: the document's state in the database, not the webhook,
is the truth, and a slow receiver must not hold a worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import asyncpg
import httpx
import structlog

from services.ingest import states
from services.ingest.webhook_target import refused_reason
from services.runtime.resources import WorkerResources

log = structlog.get_logger("docent.ingest.webhook")
ATTEMPTS = 3
SIGNATURE_HEADER = "X-Docent-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_secret(resources: WorkerResources) -> str:
    configured = resources.settings.webhook_secret
    if configured is not None:
        return configured.get_secret_value()
    # derived, so receivers can be given a stable secret without a separate setting
    return hmac.new(resources.secret.encode(), b"docent-webhooks", hashlib.sha256).hexdigest()


async def deliver_webhook(resources: WorkerResources, row: asyncpg.Record) -> bool:
    """POST the finished document (a row of states.FINISHED_COLUMNS) to its webhook_url, if it has one."""
    url = row["webhook_url"]
    if not url:
        return False
    refused = await refused_reason(url, resources.settings.webhook_allow_private)
    if refused:  # allowed at upload, but its name resolves elsewhere now (or the setting changed)
        log.warning("webhook_refused", url=url, why=refused)
        return False
    body = json.dumps({
        "event": f"document.{row['status']}",
        "document_id": str(row["id"]),
        "filename": row["filename"],
        "status": row["status"],
        "error": row["error"],
        "error_reason": row["error_reason"],
        "page_count": row["page_count"],
        "chunk_count": row["chunk_count"],
    }, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(webhook_secret(resources), body)}
    async with httpx.AsyncClient(timeout=5) as client:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                reply = await client.post(url, content=body, headers=headers)
                if reply.status_code < 300:
                    await states.mark_webhook_sent(resources.pool, row["id"])
                    return True
                log.warning("webhook_rejected", url=url, status=reply.status_code, attempt=attempt)
            except httpx.HTTPError as error:
                log.warning("webhook_failed", url=url, error=type(error).__name__, attempt=attempt)
            await asyncio.sleep(0.5 * attempt)
    return False
