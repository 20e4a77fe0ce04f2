"""How busy this machine's CPUs have been lately: the full-text memory embedding waits while they are.

On one machine (`make run`, docker compose on a small host) the worker's full-text memory embedding
runs on the cores the retrieval service needs for each chat turn's query embedding. With
multilingual-e5-small a turn's full text costs ~90 ms of CPU against ~15 ms for its question
(bench/memory_recall.py), so refining every turn as it arrives made a REST chat turn cost a second,
larger model run (docs/BENCHMARKS.md). A turn is searchable from its question's vector at once
(services/chat/actors.py); its refinement can wait until the CPUs are idle without memory falling
behind.
"""

from __future__ import annotations

import threading
import time

import psutil


class CpuLoad:
    """The busy share of all CPUs (0-1) since the previous sample, sampled at most every `min_window` s.

    psutil.cpu_percent(interval=None) keeps one module-wide previous sample, so callers in several
    threads would measure each other's few-millisecond intervals; this keeps its own.
    """

    def __init__(self, min_window: float = 0.5) -> None:
        self.min_window = min_window
        self._lock = threading.Lock()
        self._last = (time.monotonic(), psutil.cpu_times())
        self._busy = 0.0

    def busy_share(self) -> float:
        with self._lock:
            now = time.monotonic()
            if now - self._last[0] >= self.min_window:
                times = psutil.cpu_times()
                self._busy = _busy_between(self._last[1], times)
                self._last = (now, times)
            return self._busy


def _busy_between(before, after) -> float:
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return 0.0 if total <= 0 else min(1.0, max(0.0, 1.0 - idle / total))
