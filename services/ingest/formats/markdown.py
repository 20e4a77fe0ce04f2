"""Markdown: read as plain text, which keeps its headings, lists and tables for the chunker."""

from __future__ import annotations

from services.ingest.formats.base import FileType
from services.ingest.formats.text import plain_text

MIME = "text/markdown"

FILE_TYPE = FileType(mime=MIME, label="MD", extensions=(".md", ".markdown"), aliases=("text/x-markdown",),
                     text=plain_text)
