"""Process lifetime: children that cannot outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux PR_SET_PDEATHSIG).

    Safe in a preexec_fn (after any uid change: the kernel clears it on credential changes) and in a
    process that was forked by someone else (Dramatiq's worker processes): if the parent is already
    gone, the signal is delivered right away.
    """
    parent = os.getppid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if parent == 1 or os.getppid() != parent:  # orphaned before the request took effect
        os.kill(os.getpid(), sig)
