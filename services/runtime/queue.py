"""Dramatiq on Redis: one broker factory for the services (which enqueue) and the workers.

Services enqueue by actor name with a plain `dramatiq.Message`, so they never import worker
code; the worker declares the actors. Queues: `ingest` (documents) and `memory` (chat turns),
so a 2,000-page PDF never delays the memory of a chat turn.
"""

from __future__ import annotations

import asyncio
import json
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from services.runtime.jobs import JobContext

INGEST_QUEUE = "ingest"
MEMORY_QUEUE = "memory"
QUEUES = (INGEST_QUEUE, MEMORY_QUEUE)
NAMESPACE = "docent"
# a worker that called the broker this recently is alive (see pending_arguments)
LIVE_WORKER_MS = 15_000


def create_broker(redis_url: str, *, middleware: list[dramatiq.Middleware] | None = None) -> RedisBroker:
    kwargs: dict[str, object] = {"url": redis_url, "namespace": NAMESPACE}
    if middleware is not None:
        kwargs["middleware"] = middleware
    broker = RedisBroker(**kwargs)  # type: ignore[arg-type]
    if not any(isinstance(installed, JobContext) for installed in broker.middleware):
        # every message carries the enqueuer's request id and trace context (services.runtime.jobs)
        broker.add_middleware(JobContext())
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def build_message(queue: str, actor: str, *args: object, **options: object) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name=queue, actor_name=actor, args=tuple(args), kwargs={}, options=dict(options),
    )


class Enqueuer:
    """Async-friendly enqueue for the gRPC services (the broker client is synchronous)."""

    def __init__(self, redis_url: str) -> None:
        self.broker = create_broker(redis_url)

    async def enqueue(self, queue: str, actor: str, *args: object) -> str:
        message = build_message(queue, actor, *args)
        await asyncio.to_thread(self.broker.enqueue, message)
        return message.message_id

    async def ping(self) -> bool:
        client: redis.Redis = self.broker.client
        return bool(await asyncio.to_thread(client.ping))

    def close(self) -> None:
        self.broker.close()


def waiting_messages(broker: RedisBroker, queue: str) -> int:
    """Messages waiting in `queue` (not yet fetched by a worker)."""
    return int(broker.client.llen(f"{NAMESPACE}:{queue}") or 0)


def queue_stats(broker: RedisBroker) -> dict[str, dict[str, int]]:
    """Per queue: waiting, delayed (retry backoff), in flight and dead-lettered messages.

    Read from the Redis layout of Dramatiq's RedisBroker: `<ns>:<q>` lists waiting ids,
    `<ns>:<q>.msgs` holds every message not yet acked (waiting + in flight), `.DQ` the delayed
    queue, `.XQ` the dead letters.
    """
    client: redis.Redis = broker.client
    stats: dict[str, dict[str, int]] = {}
    for queue in QUEUES:
        base = f"{NAMESPACE}:{queue}"
        pipe = client.pipeline(transaction=False)
        pipe.llen(base).hlen(f"{base}.msgs").llen(f"{base}.DQ").hlen(f"{base}.DQ.msgs").zcard(f"{base}.XQ")
        waiting, unacked, delayed_waiting, delayed_unacked, dead = (int(v or 0) for v in pipe.execute())
        stats[queue] = {
            "waiting": waiting,
            "in_flight": max(unacked - waiting, 0),
            "delayed": max(delayed_unacked, delayed_waiting),
            "dead": dead,
        }
    return stats



def pending_arguments(broker: RedisBroker, queue: str, actor: str, *, include_fetched: bool = False) -> set[str]:
    """The first argument (a document id) of every `actor` message that will be delivered: waiting in
    `queue` or its delayed queue, and with `include_fetched`, also fetched by a worker that is alive (it
    called the broker within LIVE_WORKER_MS: every fetch and ack is a heartbeat). The caller asks for
    fetched messages only while workers are busy, when prefetched messages legitimately wait: a
    message a worker holds but never works on (it died with it, and Dramatiq redelivers only after a
    heartbeat timeout and a random maintenance pass; or it lost it across a Redis restart) shows as
    pending with nothing processing, and must not count. By argument, not message id: the broker
    keys each enqueue (and each retry) by an id of its own.
    """
    client: redis.Redis = broker.client
    now_ms = time.time() * 1000
    beats = client.zrange(f"{NAMESPACE}:__heartbeats__", 0, -1, withscores=True) if include_fetched else []
    live = [worker.decode() for worker, beat in beats if now_ms - beat <= LIVE_WORKER_MS]
    found: set[str] = set()
    for base in (f"{NAMESPACE}:{queue}", f"{NAMESPACE}:{queue}.DQ"):
        ids = list(client.lrange(base, 0, -1))
        suffix = base.removeprefix(f"{NAMESPACE}:")
        for worker in live:
            ids.extend(client.smembers(f"{NAMESPACE}:__acks__.{worker}.{suffix}"))
        for start in range(0, len(ids), 500):
            for raw in client.hmget(f"{base}.msgs", ids[start:start + 500]):
                if raw is None:
                    continue
                body = json.loads(raw)
                if body.get("actor_name") == actor and body.get("args"):
                    found.add(str(body["args"][0]))
    return found
