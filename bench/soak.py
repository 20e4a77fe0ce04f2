"""Soak: 16 chat clients and a steady upload stream for N minutes; errors, RSS trend, stuck documents."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid

import httpx
import psutil

from bench import corpus, memory
from bench.search import QUESTIONS, USERS, user
from bench.stats import slope, summary
from services.devstack import DevStack
from services.runtime.embedded import find_running_redis_url
from services.runtime.queue import MEMORY_QUEUE, create_broker, waiting_messages

CHAT_CLIENTS = 16
UPLOAD_INTERVAL_S = 3.0
SAMPLE_INTERVAL_S = 5.0


def _role(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    for role in ("gateway", "ingest", "retrieval", "chat"):
        if f"serve {role}" in command:
            return role
    if "dramatiq" in command:
        return "worker"
    if "postgres" in command:
        return "postgres"
    if "redis" in command:
        return "redis"
    return "supervisor" if "services.cli up" in command else process.name()


def sample_rss(stack: DevStack) -> dict[str, float]:
    """Memory (MB) per role, as PSS: shared pages (Postgres shared buffers, forked workers) are split
    between the processes sharing them, so summing a role's processes does not count them twice."""
    totals: dict[str, float] = {}
    for pid in stack.pids():
        try:
            process = psutil.Process(pid)
            role = _role(process)
            totals[role] = totals.get(role, 0.0) + process.memory_full_info().pss / 2**20
        except psutil.Error:
            continue
    return totals


async def soak(stack: DevStack, minutes: float) -> dict:
    stop_at = time.monotonic() + minutes * 60
    tokens = [stack.token(user(number)) for number in range(USERS)]
    latencies: list[float] = []
    errors: list[str] = []
    uploaded: list[str] = []
    samples: list[tuple[float, dict[str, float]]] = []
    files = corpus.small_files(400)
    memory_depth: list[tuple[float, int]] = []
    broker = create_broker(find_running_redis_url(stack.data_dir) or "")
    soak_started = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        async def chatter() -> None:
            while time.monotonic() < stop_at:
                began = time.perf_counter()
                try:
                    response = await client.post("/api/chat/", json={"query": random.choice(QUESTIONS)},
                                                 headers={"authorization": f"Bearer {random.choice(tokens)}"})
                    response.raise_for_status()
                    latencies.append((time.perf_counter() - began) * 1000)
                except Exception as error:
                    errors.append(f"chat: {type(error).__name__}: {str(error)[:120]}")

        async def uploader() -> None:
            headers = {"authorization": f"Bearer {stack.token('bench-soak-uploader')}"}
            number = 0
            while time.monotonic() < stop_at:
                name, data = files[number % len(files)]
                data += f"\n\nsoak copy {uuid.uuid4()}".encode()  # distinct bytes: no dedup
                try:
                    response = await client.post("/api/upload/", headers=headers,
                                                 files={"file": (name, data, "text/markdown")})
                    response.raise_for_status()
                    uploaded.append(response.json()["id"])
                except Exception as error:
                    errors.append(f"upload: {type(error).__name__}: {str(error)[:120]}")
                number += 1
                await asyncio.sleep(UPLOAD_INTERVAL_S)

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                samples.append((time.monotonic() - started, await asyncio.to_thread(sample_rss, stack)))
                memory_depth.append((time.monotonic() - started,
                                     await asyncio.to_thread(waiting_messages, broker, MEMORY_QUEUE)))
                await asyncio.sleep(SAMPLE_INTERVAL_S)

        await asyncio.gather(sampler(), uploader(), *(chatter() for _ in range(CHAT_CLIENTS)))
        # let the queue drain, then nothing may be left pending or processing
        headers = {"authorization": f"Bearer {stack.token('bench-soak-uploader')}"}
        deadline = time.monotonic() + 300
        while True:
            listing = (await client.get("/api/upload/", headers=headers, params={"limit": 1000})).json()
            unfinished = [d for d in listing if d["processing_status"] in ("pending", "processing")]
            if not unfinished or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    roles = sorted({role for _, sample in samples for role in sample})
    trend = {}
    for role in roles:
        points = [(at, sample[role]) for at, sample in samples if role in sample]
        xs, ys = [at / 60 for at, _ in points], [value for _, value in points]
        half = len(ys) // 2
        trend[role] = {"start_mb": round(ys[0], 1), "end_mb": round(ys[-1], 1), "max_mb": round(max(ys), 1),
                       "slope_mb_per_min_second_half": round(slope(xs[half:], ys[half:]), 2)}
    failed = sum(1 for d in listing if d["processing_status"] == "failed")
    broker.close()
    depth_xs, depth_ys = [at / 60 for at, _ in memory_depth], [value for _, value in memory_depth]
    half = len(depth_ys) // 2
    memory_queue = {"max": max(depth_ys, default=0), "end": depth_ys[-1] if depth_ys else 0,
                    "slope_per_min_second_half": round(slope(depth_xs[half:], depth_ys[half:]), 2)
                    if len(depth_ys) > 3 else None}
    return {"minutes": minutes, "chat": summary(latencies), "chat_req_per_s": round(len(latencies) / (minutes * 60), 1),
            "errors": len(errors), "error_examples": errors[:5], "uploads": len(uploaded),
            "stuck_documents": len(unfinished), "failed_documents": failed, "rss": trend,
            "memory": await memory.lag_since(stack, soak_started), "memory_queue_waiting": memory_queue,
            "rss_samples": [(round(at, 1), sample) for at, sample in samples]}
