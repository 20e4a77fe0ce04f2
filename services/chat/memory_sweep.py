"""Chat's sweep pass over its turns' memory, registered with the sweeper process (services/sweeper.py,
loop in services.runtime.sweeps). Each round:
- a stored turn whose memory was never indexed is enqueued again while the memory queue is short
  (the chat service enqueues `index_chat_turn` when it stores a turn, and a lost enqueue is not an
  error there: this is what makes it eventually happen);
- when the memory queue is idle and the CPUs were not busy since the last round (at most
  DOCENT_MEMORY_REFINE_MAX_CPU used), turns searchable by their question's vector only (the worker
  skipped the full-text embedding under load, services/chat/actors.py) are enqueued for it;
- the memory-lag gauges are refreshed.
"""

from __future__ import annotations

import asyncio

import asyncpg

from services.chat import conversations
from services.chat.cpu_load import CpuLoad
from services.runtime import metrics
from services.runtime.names import INDEX_CHAT_TURN
from services.runtime.queue import MEMORY_QUEUE, waiting_messages
from services.runtime.sweeps import SweepContext, SweepPass

MEMORY_SWEEP_LOCK_KEY = 0x6D656D6F7279  # "memory"
# each sweep waits longer before trying a turn again (stale_after × 2^sweeps), and gives up after
# MAX_MEMORY_SWEEPS: a turn that always fails (e.g. a permanent embedding error) must not be retried forever
MAX_MEMORY_SWEEPS = 6


# A turn still unindexed while this many messages wait is most likely among them, carrying its
# question's vector. Queued again, it would come without one and cost a full-text embedding: under
# a chat load the worker could not keep up with, those re-queued turns took the worker's time and the
# backlog grew faster (a 10-minute soak with multilingual-e5-small, docs/BENCHMARKS.md). A message
# really lost is queued again once the backlog is short; its turn is safe in Postgres until then.
REENQUEUE_BELOW_WAITING = 100
# turns queued for their full-text embedding per round, while the memory queue is idle
REFINE_PER_SWEEP = 200
# the lag quantiles cover the turns indexed within this window
LAG_WINDOW_SECONDS = 60.0
# the sweeper process's view of the CPU load: the busy share between two rounds
CPU = CpuLoad()


async def sweep_memory(conn: asyncpg.Connection, context: SweepContext) -> dict[str, int]:
    waiting = await asyncio.to_thread(waiting_messages, context.enqueuer.broker, MEMORY_QUEUE)
    turns: list = []
    if waiting < REENQUEUE_BELOW_WAITING:
        turns = await conversations.take_unindexed_for_sweep(conn, context.stale_after, MAX_MEMORY_SWEEPS)
        for turn_id in turns:
            await context.enqueuer.enqueue(MEMORY_QUEUE, INDEX_CHAT_TURN, str(turn_id))
    refined: list = []
    idle_cpu = CPU.busy_share() <= context.settings.memory_refine_max_cpu
    if idle_cpu and waiting == 0:
        refined = await conversations.take_unrefined_for_sweep(conn, context.settings.sweep_interval_seconds,
                                                               MAX_MEMORY_SWEEPS, REFINE_PER_SWEEP)
        for turn_id in refined:
            await context.enqueuer.enqueue(MEMORY_QUEUE, INDEX_CHAT_TURN, str(turn_id))
    lag = await conversations.memory_lag_quantiles(conn, LAG_WINDOW_SECONDS, MAX_MEMORY_SWEEPS)
    metrics.MEMORY_LAG.labels("0.5").set(lag["p50"])
    metrics.MEMORY_LAG.labels("0.99").set(lag["p99"])
    metrics.MEMORY_OLDEST_WAITING.set(lag["oldest_waiting"])
    return {"turns": len(turns), "turns_to_refine": len(refined)}


MEMORY_SWEEP = SweepPass("chat_memory", "chat", MEMORY_SWEEP_LOCK_KEY, sweep_memory)
