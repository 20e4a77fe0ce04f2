"""Loopback ports for stacks started on the fly (the bench's and eval's `docent up`, the test suite).

A port taken with bind(("127.0.0.1", 0)) comes from the kernel's ephemeral range, the same range every
outgoing connection on the machine draws its local port from. Between choosing it and the child
process binding it, any client connection (to Postgres, Redis, a gRPC peer) may take it, and the child
then fails with "address already in use". Ports below that range are never handed out that way, so
they are chosen there, at random, checked bindable, and never given twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000
_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems start higher, so below it is still outside


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def unused_port() -> int:
    """A loopback port no one is listening on, outside the ephemeral range, not given out before here."""
    highest = _ephemeral_start() - 1
    if highest - _LOWEST < 1000:  # an unusual range leaves no room below it: let the kernel choose
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    with _lock:
        for _ in range(200):
            port = random.randint(_LOWEST, highest)
            if port not in _given and _bindable(port):
                _given.add(port)
                return port
    raise RuntimeError(f"no free loopback port found in {_LOWEST}-{highest}")
