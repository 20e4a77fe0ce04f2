"""Turn an upload into page-numbered text, one page at a time, with the parser its file type registers.

Each format's parser lives in its module under services.ingest.formats: PDFs go page by page through
services.ingest.parse_pdf; DOCX, CSV, JSON, TXT and MD become one page of text with their structure
kept (headings, Markdown tables with their captions, "path.to.key: value").
"""

from __future__ import annotations

from collections.abc import Iterator

from services.ingest import formats
from services.ingest.ocr import OcrOptions
from services.ingest.pages import (  # noqa: F401  (re-exported: callers import the parse API from here)
    BLANK_MESSAGE,
    CSV_INVALID,
    DOCX_INVALID,
    EMPTY_FILE,
    INVALID_DOCX_MESSAGE,
    JSON_INVALID,
    NO_TEXT,
    PDF_ENCRYPTED,
    PDF_INVALID,
    UNSUPPORTED_TYPE,
    Page,
    ParseError,
    normalise,
)


def count_pages(data: bytes, mime: str) -> int:
    """Page count without extracting anything; raises ParseError for encrypted or unreadable PDFs."""
    file_type = formats.REGISTRY.by_mime.get(mime)
    return file_type.count_pages(data) if file_type is not None and file_type.count_pages is not None else 1


def iter_pages(data: bytes, mime: str, ocr: OcrOptions | None = None) -> Iterator[Page]:
    """Yield pages with text in order, one at a time; raise ParseError (at the end for NO_TEXT).

    `ocr` sets how scanned PDF pages are OCR'd (default: on, with the default limits).
    """
    file_type = formats.REGISTRY.by_mime.get(mime)
    if file_type is not None and file_type.pages is not None:
        yield from file_type.pages(data, ocr)
        return
    if not data:
        raise ParseError("the file is empty", EMPTY_FILE)
    if file_type is None or file_type.text is None:
        raise ParseError(f"unsupported file type: {mime}", UNSUPPORTED_TYPE)
    text = file_type.text(data)
    if not text:
        raise ParseError(BLANK_MESSAGE, NO_TEXT)
    yield Page(1, text)
