"""What operators ask of the ingest side: how deep the queues are, what is in flight, what failed."""

from __future__ import annotations

import asyncio

import asyncpg

from services.ingest import states
from services.runtime.config import Settings
from services.runtime.embedded import resolve_backing_urls
from services.runtime.queue import create_broker, queue_stats


async def queue_report(settings: Settings) -> str:
    settings = resolve_backing_urls(settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        by_status = await states.count_by_status(conn)
        processing = await states.processing_now(conn, 20)
        failed = await states.recently_failed(conn, 10)
        unindexed_turns = await conn.fetchval("SELECT count(*) FROM chat_turns WHERE memory_indexed_at IS NULL")
    finally:
        await conn.close()
    # the queue is read after the documents: a document finishing in between then shows as one message
    # fewer, never as a message without its document (what an operator looks for in a backlog)
    broker = create_broker(settings.redis_url or "")
    try:
        stats = await asyncio.to_thread(queue_stats, broker)
    finally:
        broker.close()

    lines = ["queue       waiting  in-flight  delayed  dead"]
    for queue, values in stats.items():
        lines.append(f"{queue:<10} {values['waiting']:>8} {values['in_flight']:>10} {values['delayed']:>8} "
                     f"{values['dead']:>5}")
    lines.append("")
    lines.append("documents   " + "  ".join(f"{status}={total}" for status, total in by_status.items()))
    lines.append(f"chat turns waiting for memory indexing: {unindexed_turns}")
    if processing:
        lines.append("")
        lines.append("processing:")
        for row in processing:
            lines.append(f"  {row['id']}  {row['filename']}  {row['stage']} pages {row['pages_done']}/"
                         f"{row['pages_total']} chunks {row['chunks_done']}/{row['chunks_total']}  "
                         f"attempt {row['attempts']}, lease {row['lease_left']} s")
    if failed:
        lines.append("")
        lines.append("recently failed:")
        for row in failed:
            reason = f" ({row['error_reason']})" if row["error_reason"] else ""
            lines.append(f"  {row['id']}  {row['updated_at']:%Y-%m-%d %H:%M}  {row['filename']}: "
                         f"{row['error']}{reason}")
    return "\n".join(lines)
