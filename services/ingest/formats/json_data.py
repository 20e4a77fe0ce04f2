"""JSON (and JSON Lines): "path.to.key: value" lines, lists as path[0]; recognised by content too."""

from __future__ import annotations

import json

from services.ingest.formats.base import FileType, decode_text
from services.ingest.pages import JSON_INVALID, ParseError, normalise

MIME = "application/json"


def looks_like_json(head: bytes) -> bool:
    text = head.lstrip()
    if not text.startswith((b"{", b"[")):
        return False
    try:
        json.loads(head.decode("utf-8-sig"))
        return True
    except (UnicodeDecodeError, ValueError):
        pass
    # a truncated head of a large object: `{"key"` is JSON-shaped enough; `[1] Introduction` is not
    return len(head) >= 4096 and text.startswith(b"{") and text[1:].lstrip().startswith(b'"')


def _scalar(value: object) -> str:
    return json.dumps(value) if value is None or isinstance(value, bool) else " ".join(str(value).split())


def _load(text: str) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise ParseError("not valid JSON: nested too deeply", JSON_INVALID) from None
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON Lines: one document per line
            try:
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            except (ValueError, RecursionError):
                pass
        message = f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        raise ParseError(message, JSON_INVALID) from None


def json_text(data: bytes) -> str:
    """Flattened iteratively, so nesting depth is not a limit."""
    lines: list[str] = []
    stack: list[tuple[str, object]] = [("", _load(decode_text(data)))]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(reversed([(f"{path}.{key}" if path else str(key), value) for key, value in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(f"{path}[{position}]", value) for position, value in enumerate(node)]))
        else:
            scalar = _scalar(node)
            lines.append(f"{path}: {scalar}" if path else scalar)
    return normalise("\n\n".join(lines))


FILE_TYPE = FileType(mime=MIME, label="JSON", extensions=(".json",), aliases=("text/json",),
                     sniff=looks_like_json, text=json_text)
