"""A bulk load under a real `docent up`: 300 small documents at once behind one worker, with a sweeper
that runs every second. Every document completes exactly once, and the ingest queue never holds much
more than one message per document still to do (the sweeper re-enqueues lost messages only, not a
waiting backlog), as `docent queue` shows while it happens.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from services.evaluation.client import RestClient
from tests.conftest import REPO
from tests.stack import start_up

DOCUMENTS = 300
EMAIL, PASSWORD = "bulk@example.com", "bulk load password"
# messages beyond pending + processing documents that a sample may see: one being acked, one retry
SLACK = 3
_QUEUE_LINE = re.compile(r"^ingest\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", re.M)
_DOCUMENTS_LINE = re.compile(r"pending=(\d+)\s+processing=(\d+)\s+completed=(\d+)\s+failed=(\d+)")


def docent_queue(env: dict[str, str]) -> tuple[int, int, int, int]:
    """(messages in the ingest queue, pending, processing, completed) as `docent queue` reports them."""
    report = subprocess.run([sys.executable, "-m", "services.cli", "queue"], cwd=REPO, env=env, text=True,
                            capture_output=True, timeout=60, check=True).stdout
    waiting, in_flight, delayed, _dead = map(int, _QUEUE_LINE.search(report).groups())
    pending, processing, completed, _failed = map(int, _DOCUMENTS_LINE.search(report).groups())
    return waiting + in_flight + delayed, pending, processing, completed


async def upload_all(base_url: str, folder: Path) -> list[str]:
    """Sign up, upload DOCUMENTS small files eight at a time; returns their ids."""
    async with RestClient(base_url) as client:
        await client.sign_in(EMAIL, PASSWORD)
        gate = asyncio.Semaphore(8)

        async def one(index: int) -> str:
            path = folder / f"note-{index:03d}.txt"
            # a few chunks each, so the backlog outlives several sweeps and the sweeper's staleness cut-off
            path.write_text(" ".join(f"Note {index}, line {line}: depot Z{index:03d} ships crate {line} on "
                                     f"weekday {line % 7} along route {line % 11}." for line in range(16)))
            async with gate:
                return await client.upload(path)

        return list(await asyncio.gather(*(one(index) for index in range(DOCUMENTS))))


async def listed(base_url: str) -> dict[str, dict]:
    async with RestClient(base_url) as client:
        await client.sign_in(EMAIL, PASSWORD)
        return {item["id"]: item for item in await client.documents()}


def test_a_bulk_load_completes_once_without_piling_up_messages(tmp_path) -> None:
    # the sweeper looks at pending documents older than max(lease, 2 sweeps) = 5 s, every second
    up = start_up({"DOCENT_SWEEP_INTERVAL_SECONDS": "1", "DOCENT_LEASE_SECONDS": "5"})
    try:
        up.wait_for("Docent is up", 180)
        base_url = f"http://127.0.0.1:{up.ports['gateway']}"
        ids = asyncio.run(upload_all(base_url, tmp_path))
        samples = []
        deadline = time.monotonic() + 300
        while True:
            messages, pending, processing, completed = docent_queue(up.env)
            samples.append((messages, pending, processing))
            assert messages <= pending + processing + SLACK, samples[-5:]
            if completed == DOCUMENTS:
                break
            assert time.monotonic() < deadline, samples[-5:]
            time.sleep(1)
        assert len(samples) >= 3  # the backlog was watched while it drained, over several sweeps
        documents = asyncio.run(listed(base_url))
        chunk_counts = {documents[ident]["chunk_count"] for ident in ids}
        assert len(chunk_counts) == 1 and chunk_counts.pop() >= 2  # alike files, alike chunks: none twice
        for ident in ids:  # each processed once: one attempt
            item = documents[ident]
            assert item["processing_status"] == "completed", item
            assert item["progress"]["attempts"] == 1, item
        assert docent_queue(up.env)[0] == 0
    finally:
        up.stop()
