"""The sweeper (a Dramatiq fork function): recovers documents whose message or worker was lost."""

from __future__ import annotations

import signal
import time


def run_sweeper() -> int:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        time.sleep(0.5)
    return 0
