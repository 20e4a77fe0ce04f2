"""Chat memory under load: how long a stored turn waits before later questions can find it.

Read from the turns' own timestamps after the REST chat section (stored: `created_at`; searchable:
`memory_indexed_at`; full-text vector: `memory_refined_at`, services/chat/actors.py), for the
turns that section stored: lag p50/p99/max, how many were still waiting when the load stopped and
how long the workers took to catch up, and the share already embedded with the full text.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import asyncpg

from services.devstack import DevStack
from services.runtime.embedded import find_running_postgres_url

DRAIN_TIMEOUT_SECONDS = 180.0


async def lag_since(stack: DevStack, since: dt.datetime) -> dict:
    url = find_running_postgres_url(stack.data_dir)
    if not url:
        return {"error": "no embedded Postgres for the stack"}
    conn = await asyncpg.connect(url)
    try:
        waiting_at_end = await conn.fetchval(
            "SELECT count(*) FROM chat_turns WHERE created_at >= $1 AND memory_indexed_at IS NULL", since)
        started = time.monotonic()
        waiting = waiting_at_end
        while waiting and time.monotonic() - started < DRAIN_TIMEOUT_SECONDS:
            await asyncio.sleep(0.5)
            waiting = await conn.fetchval(
                "SELECT count(*) FROM chat_turns WHERE created_at >= $1 AND memory_indexed_at IS NULL", since)
        row = await conn.fetchrow(
            """SELECT count(*) AS turns,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
                      max(lag) AS max, avg(refined::int) AS refined_share
               FROM (SELECT extract(epoch FROM memory_indexed_at - created_at) AS lag,
                            memory_refined_at IS NOT NULL AS refined
                     FROM chat_turns WHERE created_at >= $1 AND memory_indexed_at IS NOT NULL) AS turns""", since)
    finally:
        await conn.close()
    return {
        "turns": row["turns"],
        "lag_p50_s": round(float(row["p50"] or 0), 3),
        "lag_p99_s": round(float(row["p99"] or 0), 3),
        "lag_max_s": round(float(row["max"] or 0), 3),
        "waiting_when_load_stopped": waiting_at_end,
        "drain_s": round(time.monotonic() - started, 1),
        "still_waiting": waiting,
        "full_text_share": round(float(row["refined_share"] or 0), 3),
    }
