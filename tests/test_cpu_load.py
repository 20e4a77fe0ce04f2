"""The CPU load the memory refinement waits on (services/chat/cpu_load.py)."""

from __future__ import annotations

import time
from collections import namedtuple

import psutil

from services.chat.cpu_load import CpuLoad, _busy_between

Times = namedtuple("Times", "user system idle iowait")


def test_busy_share_counts_idle_and_iowait_as_not_busy() -> None:
    before = Times(100.0, 50.0, 800.0, 50.0)
    assert _busy_between(before, Times(130.0, 60.0, 850.0, 60.0)) == 0.4  # 40 busy of 100
    assert _busy_between(before, Times(200.0, 50.0, 800.0, 50.0)) == 1.0
    assert _busy_between(before, before) == 0.0  # no time passed: not busy


def test_a_sample_covers_at_least_the_window_and_agrees_with_psutil() -> None:
    load = CpuLoad(min_window=0.2)
    first = load.busy_share()
    assert first == 0.0  # nothing measured yet: the window has not passed
    psutil.cpu_percent(interval=None)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # keep one core busy over the window
        pass
    share = load.busy_share()
    reference = psutil.cpu_percent(interval=None) / 100
    assert 0.0 < share <= 1.0
    assert abs(share - reference) < 0.35, (share, reference)
    assert load.busy_share() == share  # within the window: the same sample, whichever thread asks
