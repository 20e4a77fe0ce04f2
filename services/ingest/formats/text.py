"""Plain text: one page, normalised; also what an upload nothing else claims is read as."""

from __future__ import annotations

from services.ingest.formats.base import FileType, decode_text
from services.ingest.pages import normalise

MIME = "text/plain"


def plain_text(data: bytes) -> str:
    return normalise(decode_text(data))


FILE_TYPE = FileType(mime=MIME, label="TXT", extensions=(".txt", ".text"), text=plain_text)
