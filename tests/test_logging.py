"""In JSON mode every line a process writes is one JSON object, library loggers included."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import logging, structlog
from services.runtime.logging import configure_logging
configure_logging("info", "json", service="gateway")
structlog.contextvars.bind_contextvars(request_id="req-1")
logging.getLogger("uvicorn.error").info("Application startup complete.")
logging.getLogger("dramatiq.worker").warning("worker %s stopped", 3)
logging.getLogger("asyncpg.pool").debug("below the level: not written")
try:
    raise ValueError("bad")
except ValueError:
    logging.getLogger("asyncpg").exception("query failed")
structlog.get_logger("docent.gateway").info("http", status=200)
"""


def test_library_and_our_lines_are_json_with_service_and_request_id() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["Application startup complete.", "worker 3 stopped", "query failed",
                                                 "http"]
    assert all(line["service"] == "gateway" and line["request_id"] == "req-1" and line["timestamp"] for line in lines)
    assert [line.get("logger") for line in lines[:3]] == ["uvicorn.error", "dramatiq.worker", "asyncpg"]
    assert [line["level"] for line in lines] == ["info", "warning", "error", "info"]
    assert "ValueError: bad" in lines[2]["exception"]
