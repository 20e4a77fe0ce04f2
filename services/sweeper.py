"""The sweeper process: the registered sweep passes, run by the loop in services.runtime.sweeps.

Forked beside the Dramatiq workers (`services.worker:run_sweeper`), or run as a child of its own by
`docent up` (`python -m services.sweeper`). Each component repairs only its own tables.
"""

from __future__ import annotations

from services.chat.memory_sweep import MEMORY_SWEEP
from services.ingest.sweeper import DOCUMENT_SWEEP
from services.runtime import sweeps

SWEEP_PASSES = (DOCUMENT_SWEEP, MEMORY_SWEEP)


def run_sweeper() -> int:
    return sweeps.run_sweeper(SWEEP_PASSES)


if __name__ == "__main__":
    raise SystemExit(run_sweeper())
