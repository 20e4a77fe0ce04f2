"""Chat's sweep pass: a stored turn whose memory was never indexed is enqueued again.

Registered with the sweeper process (services/sweeper.py, loop in services.runtime.sweeps). The
chat service enqueues `index_chat_turn` when it stores a turn, and a lost enqueue is not an error
there: this pass is what makes it eventually happen.
"""

from __future__ import annotations

import asyncpg

from services.chat import conversations
from services.runtime.names import INDEX_CHAT_TURN
from services.runtime.queue import MEMORY_QUEUE
from services.runtime.sweeps import SweepContext, SweepPass

MEMORY_SWEEP_LOCK_KEY = 0x6D656D6F7279  # "memory"
# each sweep waits longer before trying a turn again (stale_after × 2^sweeps), and gives up after
# MAX_MEMORY_SWEEPS: a turn that always fails (e.g. a permanent embedding error) must not be retried forever
MAX_MEMORY_SWEEPS = 6


async def sweep_memory(conn: asyncpg.Connection, context: SweepContext) -> dict[str, int]:
    turns = await conversations.take_unindexed_for_sweep(conn, context.stale_after, MAX_MEMORY_SWEEPS)
    for turn_id in turns:
        await context.enqueuer.enqueue(MEMORY_QUEUE, INDEX_CHAT_TURN, str(turn_id))
    return {"turns": len(turns)}


MEMORY_SWEEP = SweepPass("chat_memory", "chat", MEMORY_SWEEP_LOCK_KEY, sweep_memory)
