"""Dramatiq actors of the `ingest` queue.

Actors take ids only and are idempotent: the database says what is left to do. Permanent
failures (a bad file) fail the document at once; transient ones (a dependency unavailable) are
retried with exponential backoff, and when the retries run out the document fails with the reason.
"""

from __future__ import annotations

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage

from services.ingest import pipeline
from services.runtime.queue import INGEST_QUEUE
from services.runtime.resources import WorkerResources

log = structlog.get_logger("docent.ingest.actors")

MAX_RETRIES = 6  # backoff 2 s, 4 s, … capped at 60 s: about 2 minutes of outage is ridden out


@dramatiq.actor(queue_name=INGEST_QUEUE, max_retries=MAX_RETRIES, min_backoff=2_000, max_backoff=60_000,
                time_limit=4 * 3600 * 1000)
async def process_document(document_id: str) -> None:
    resources = await WorkerResources.get()
    message = CurrentMessage.get_current_message()
    retries = int(message.options.get("retries", 0)) if message else 0
    try:
        await pipeline.process_document(resources, document_id)
    except pipeline.PermanentFailure as error:
        # the document's state records it; a dead letter would add nothing
        await pipeline.fail(resources, document_id, str(error), error.reason)
    except Exception as error:  # transient, or unexpected: retried, then failed with the reason
        reason = str(error) if isinstance(error, pipeline.TransientFailure) else type(error).__name__
        log.warning("document_attempt_failed", document_id=document_id, retries=retries, reason=reason,
                    exc_info=not isinstance(error, pipeline.TransientFailure))
        try:
            if retries >= MAX_RETRIES:
                await pipeline.fail(resources, document_id,
                                    f"processing failed after {retries + 1} attempts: {reason}",
                                    pipeline.RETRIES_EXHAUSTED)
                return
            await pipeline.release(resources.pool, document_id, reason)
        except Exception:
            log.warning("document_state_update_failed", document_id=document_id)  # the sweeper recovers it
        raise
