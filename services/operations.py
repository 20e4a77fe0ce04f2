"""`docent queue`: the queues, then what each owner reports of its work (documents from ingest, chat
turns waiting for memory from chat). An operator tool: it reads Redis and Postgres directly."""

from __future__ import annotations

import asyncio

import asyncpg

from services.chat import conversations
from services.ingest.operations import documents_report
from services.runtime.config import Settings
from services.runtime.embedded import resolve_backing_urls
from services.runtime.queue import create_broker, queue_stats


async def queue_report(settings: Settings) -> str:
    settings = resolve_backing_urls(settings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        documents = await documents_report(conn)
        unindexed_turns = await conversations.count_unindexed(conn)
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
    lines += ["", documents.summary, f"chat turns waiting for memory indexing: {unindexed_turns}",
              *documents.details]
    return "\n".join(lines)


async def show_queue(settings: Settings) -> int:
    print(await queue_report(settings))
    return 0
