"""PDF pages: pdfium for text (fast, robust on damaged files), pdfplumber only for ruled tables,
OCR (services.ingest.ocr) for scanned pages that have no usable text layer.

One page at a time, each page object closed after use, so a 2,000-page PDF stays bounded in
memory. Page furniture (page numbers, running headers) is dropped; lines are reflowed into
paragraphs so the chunker sees real paragraph boundaries.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import structlog

from services.ingest.ocr import OcrOptions
from services.ingest.ocr_pages import PageOcr, needs_ocr, scan_resolution
from services.ingest.pages import (
    EMPTY_FILE,
    ENCRYPTED_MESSAGE,
    INVALID_PDF_MESSAGE,
    NO_TEXT,
    OCR_EMPTY_MESSAGE,
    OCR_OFF_MESSAGE,
    PDF_ENCRYPTED,
    PDF_INVALID,
    SCANNED_MESSAGE,
    Page,
    ParseError,
    normalise,
)
from services.ingest.pdf_tables import MARK, TableReader, put_tables_back, text_around_tables

log = structlog.get_logger("docent.ingest.parse")

# A page whose vector paths have at least this many segments may hold a ruled table; above the
# upper bound it is a drawing or chart, where pdfplumber is slow and finds no real table.
TABLE_MIN_SEGMENTS = 8
TABLE_MAX_SEGMENTS = 4000

# pdfium keeps global state and is not thread-safe, and Dramatiq runs several actor threads per process
_PDFIUM_LOCK = threading.RLock()
# table-of-contents leaders ". . . . . 12" cost dozens of tokens per line and carry nothing
_LEADER_DOTS = re.compile(r"(?: ?\.){4,} ?")


def _reflow(text: str) -> str:
    """Rebuild paragraphs from PDF lines: a line clearly shorter than the page's usual width ends one.

    pdfium gives one line per printed line and no blank lines, so without this every sentence
    that wraps would look like a paragraph break to the chunker.
    """
    lines = text.split("\n")
    lengths = sorted(len(line) for line in lines if line)
    if not lengths:
        return ""
    typical = lengths[min(len(lengths) - 1, int(len(lengths) * 0.8))]
    short = typical * 0.6
    paragraphs: list[str] = []
    current = ""
    for line in lines:
        if line:
            current = current + line if current.endswith("-") or not current else f"{current} {line}"
        if current and (not line or len(line) < short):
            paragraphs.append(current)
            current = ""
    if current:
        paragraphs.append(current)
    return "\n\n".join(paragraphs)


_PAGE_NUMBER = re.compile(r"^(page\s+)?\d{1,4}(\s+of\s+\d{1,4})?$", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


class _RunningLines:
    """Drops page furniture: bare page numbers, and headers/footers that repeat from page to page.

    A first or last line whose shape (digits masked) was already a first or last line on an earlier
    page is a running header or footer ("Chapter 3: Importing data 16"); the first time it is seen
    it is kept, since one page cannot tell a header from a sentence.
    """

    MAX_LENGTH = 70  # running headers are short; a long repeated-shape line is more likely content

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def remove_from(self, text: str) -> str:
        lines = text.split("\n")
        for position in (0, -1):
            while lines and not lines[position].strip():
                lines.pop(position)
            if len(lines) < 2:  # a page's only line is its content, whatever it looks like
                break
            line = lines[position].strip()
            if MARK in line:  # a table's place, not furniture
                break
            shape = _DIGITS.sub("#", line).lower()
            if _PAGE_NUMBER.match(line) or (len(line) <= self.MAX_LENGTH and shape in self.seen):
                lines.pop(position)
            elif len(line) <= self.MAX_LENGTH:
                self.seen.add(shape)
        return "\n".join(lines)



def _open_pdf(data: bytes) -> pdfium.PdfDocument:
    if not data:
        raise ParseError("the file is empty", EMPTY_FILE)
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        if error.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY) \
                or "password" in str(error).lower():
            raise ParseError(ENCRYPTED_MESSAGE, PDF_ENCRYPTED) from None
        raise ParseError(INVALID_PDF_MESSAGE, PDF_INVALID) from None


def count_pdf_pages(data: bytes) -> int:
    """Page count without extracting anything; raises ParseError for encrypted or unreadable PDFs."""
    with _PDFIUM_LOCK:
        document = _open_pdf(data)
        try:
            pages = len(document)
        finally:
            document.close()
    if pages == 0:
        raise ParseError(INVALID_PDF_MESSAGE, PDF_INVALID)
    return pages


def _ruling_segments(page) -> int:
    """Line segments drawn on the page, counted up to TABLE_MAX_SEGMENTS + 1."""
    segments = 0
    for position in range(pdfium_c.FPDFPage_CountObjects(page.raw)):
        handle = pdfium_c.FPDFPage_GetObject(page.raw, position)
        if pdfium_c.FPDFPageObj_GetType(handle) == pdfium_c.FPDF_PAGEOBJ_PATH:
            segments += max(0, pdfium_c.FPDFPath_CountSegments(handle))
            if segments > TABLE_MAX_SEGMENTS:
                break
    return segments


def _read_pdfium_page(document, index: int) -> tuple[str, bool, float]:
    """Text layer, whether it may hold a ruled table, and the resolution of its scan (0: not a scan)."""
    page = document[index]
    try:
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_bounded()
        finally:
            textpage.close()
        segments = _ruling_segments(page)
        scan_dpi = scan_resolution(page) if needs_ocr(text) else 0.0
    finally:
        page.close()
    return text, TABLE_MIN_SEGMENTS <= segments <= TABLE_MAX_SEGMENTS, scan_dpi



def pdf_pages(data: bytes, ocr: OcrOptions | None = None) -> Iterator[Page]:
    with _PDFIUM_LOCK:
        document = _open_pdf(data)
    tables = TableReader(data)
    furniture = _RunningLines()
    scans = PageOcr(ocr or OcrOptions())
    found_text = False
    try:
        with _PDFIUM_LOCK:
            total = len(document)
        for index in range(total):
            try:
                with _PDFIUM_LOCK:
                    raw, table_like, scan_dpi = _read_pdfium_page(document, index)
            except pdfium.PdfiumError as error:
                # one damaged page should not cost the rest of the document
                log.info("pdf_page_unreadable", page=index + 1, error=str(error))
                continue
            if scan_dpi:
                # a scanned page: its OCR'd text is already in paragraphs, only furniture goes
                text = furniture.remove_from(normalise(scans.read(document, index, scan_dpi, _PDFIUM_LOCK)))
                if text:
                    found_text = True
                    yield Page(index + 1, text)
                continue
            found = tables.tables(index) if table_like else []
            if found:
                with _PDFIUM_LOCK:
                    raw = text_around_tables(document, index, found)
            text = _reflow(_LEADER_DOTS.sub(" … ", furniture.remove_from(normalise(raw))))
            if found:
                text = put_tables_back(text, found)
            if text:
                found_text = True
                yield Page(index + 1, text)
    finally:
        tables.close()
        with _PDFIUM_LOCK:
            document.close()
    if not found_text:
        if scans.skipped_off:
            raise ParseError(OCR_OFF_MESSAGE, NO_TEXT)
        raise ParseError(OCR_EMPTY_MESSAGE if scans.attempted else SCANNED_MESSAGE, NO_TEXT)

