"""The documents' sweep pass: no document stays pending or processing forever.

Registered with the sweeper process (services/sweeper.py, loop in services.runtime.sweeps). Each pass:
- recovers `processing` documents whose lease expired (their worker died): back to pending and
  re-enqueued, or `failed` once they used up their attempts;
- re-enqueues `pending` documents whose message is lost (enqueued long ago and no longer in the
  broker, or never enqueued); one that waits behind a backlog keeps its message;
- refreshes the documents-by-status gauge.
"""

from __future__ import annotations

import asyncio

import asyncpg

from services.ingest import states
from services.runtime import metrics
from services.runtime.names import PROCESS_DOCUMENT
from services.runtime.queue import INGEST_QUEUE, pending_arguments
from services.runtime.sweeps import SweepContext, SweepPass

SWEEP_LOCK_KEY = 0x737765657065  # "sweepe"


async def sweep_documents(conn: asyncpg.Connection, context: SweepContext) -> dict[str, int]:
    expired = await states.recover_expired_leases(conn, context.settings.max_attempts)
    failed = sum(1 for row in expired if row["status"] == states.Status.FAILED)
    # A pending document enqueued long ago is waiting behind a backlog, or lost its message (Redis
    # restarted, enqueue failed, the worker that fetched it died). Only those without a waiting message
    # are re-enqueued, so that a backlog of N documents stays about N messages (plus the few a worker
    # has prefetched) instead of growing by N each sweep. A recovered document's old message belongs
    # to a dead worker: it gets a new one.
    recovered = {row["id"] for row in expired if row["status"] == states.Status.PENDING}
    stale = await states.pending_not_enqueued_since(conn, context.stale_after)
    # while documents are being processed, messages prefetched by live workers are waiting their turn
    busy = await states.any_processing(conn)
    waiting = await asyncio.to_thread(pending_arguments, context.enqueuer.broker, INGEST_QUEUE, PROCESS_DOCUMENT,
                                      include_fetched=busy)
    lost = [ident for ident in stale if ident in recovered or str(ident) not in waiting]
    for ident in lost:
        task_id = await context.enqueuer.enqueue(INGEST_QUEUE, PROCESS_DOCUMENT, str(ident))
        await states.mark_enqueued(conn, ident, task_id)
    for status, total in (await states.count_by_status(conn)).items():
        metrics.DOCUMENTS_BY_STATUS.labels(status).set(total)
    return {"requeued": len(lost), "recovered": len(expired) - failed, "failed": failed}


DOCUMENT_SWEEP = SweepPass("documents", "ingest", SWEEP_LOCK_KEY, sweep_documents)
