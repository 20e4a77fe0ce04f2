"""Turn an upload into page-numbered text, one page at a time.

PDF text comes from pdfium (fast, robust on damaged files); pdfplumber is only opened for pages
with ruling lines, where it can recover table rows as "a | b | c". Other formats become one page.
Every failure a user can cause is a ParseError with a stable reason and a message worth showing.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import structlog

from services.ingest.filetypes import CSV, DOCX, JSON, MD, PDF, TXT

log = structlog.get_logger("docent.ingest.parse")

PDF_ENCRYPTED = "PDF_ENCRYPTED"
PDF_INVALID = "PDF_INVALID"
NO_TEXT = "NO_TEXT"
EMPTY_FILE = "EMPTY_FILE"
DOCX_INVALID = "DOCX_INVALID"
CSV_INVALID = "CSV_INVALID"
JSON_INVALID = "JSON_INVALID"
UNSUPPORTED_TYPE = "UNSUPPORTED_TYPE"

ENCRYPTED_MESSAGE = "the PDF is password-protected"
INVALID_PDF_MESSAGE = "not a valid PDF (the file is damaged, truncated or is not a PDF)"
SCANNED_MESSAGE = "no extractable text (the document may be a scanned image; OCR is not available)"
BLANK_MESSAGE = "no extractable text (the document is blank)"
INVALID_DOCX_MESSAGE = "not a valid DOCX file (the file is damaged or is not a Word document)"

# a zip bomb would otherwise be inflated into memory by python-docx
MAX_DOCX_UNPACKED_BYTES = 256 * 1024 * 1024
# A page whose vector paths have at least this many segments may hold a ruled table; above the
# upper bound it is a drawing or chart, where pdfplumber is slow and finds no real table.
TABLE_MIN_SEGMENTS = 8
TABLE_MAX_SEGMENTS = 4000
TABLE_CACHE_PAGES = 32
CSV_SNIFF_CHARS = 16384

# pdfium keeps global state and is not thread-safe, and Dramatiq runs several actor threads per process
_PDFIUM_LOCK = threading.RLock()


class ParseError(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class Page:
    number: int  # 1-based; formats without pages are page 1
    text: str


# pdfium marks a hyphen it judged to be line-breaking with \x02; \xad is the Unicode soft hyphen
_SOFT_HYPHEN_BREAK = re.compile(r"[\x02\xad\ufffe] *\n *")
_HYPHEN_BREAK = re.compile(r"(?<=[a-z])- *\n *(?=[a-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\x80-\x9f\xad\ufffe\uffff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
# table-of-contents leaders ". . . . . 12" cost dozens of tokens per line and carry nothing
_LEADER_DOTS = re.compile(r"(?: ?\.){4,} ?")


def normalise(text: str) -> str:
    """Join hyphenated line breaks, drop control characters, collapse spaces, keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n\n")
    text = _SOFT_HYPHEN_BREAK.sub("", text)
    text = _HYPHEN_BREAK.sub("", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


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
            shape = _DIGITS.sub("#", line).lower()
            if _PAGE_NUMBER.match(line) or (len(line) <= self.MAX_LENGTH and shape in self.seen):
                lines.pop(position)
            elif len(line) <= self.MAX_LENGTH:
                self.seen.add(shape)
        return "\n".join(lines)


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # legacy 8-bit exports (Excel CSV, old notes) are almost always Windows-1252
        return data.decode("cp1252", errors="replace")


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


def count_pages(data: bytes, mime: str) -> int:
    """Page count without extracting anything; raises ParseError for encrypted or unreadable PDFs."""
    if mime != PDF:
        return 1
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


def _read_pdfium_page(document, index: int) -> tuple[str, bool]:
    page = document[index]
    try:
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_bounded()
        finally:
            textpage.close()
        segments = _ruling_segments(page)
    finally:
        page.close()
    return text, TABLE_MIN_SEGMENTS <= segments <= TABLE_MAX_SEGMENTS


def render_table(rows: list[list[object]]) -> str:
    """Rows as "a | b | c" lines; a 1-column or 1-row "table" is just a framed box, not a table."""
    lines = []
    for row in rows:
        cells = [" ".join(str(cell).split()) if cell is not None else "" for cell in row]
        if any(cells):
            lines.append(" | ".join(cells))
    if len(lines) < 2 or max(len(row) for row in rows) < 2:
        return ""
    return "\n".join(lines)


class _TableReader:
    """pdfplumber, opened on the first page that needs it and walked forward one page at a time."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pdf = None
        self._page_objects: Iterator | None = None
        self._next_index = 0
        self._pages_read = 0
        self._broken = False

    def tables(self, index: int) -> str:
        if self._broken:
            return ""
        try:
            import pdfplumber
            from pdfminer.pdfpage import PDFPage

            if self._pdf is None:
                self._pdf = pdfplumber.open(io.BytesIO(self._data))
                self._page_objects = PDFPage.create_pages(self._pdf.doc)
            self._pages_read += 1
            if self._pages_read % TABLE_CACHE_PAGES == 0:
                # pdfminer caches every object it resolves; on a long document with tables on
                # every page that would grow to the whole decompressed file
                for cache in ("_cached_objs", "_parsed_objs"):
                    getattr(self._pdf.doc, cache, {}).clear()
            assert self._page_objects is not None
            page_object = None
            while self._next_index <= index:
                page_object = next(self._page_objects)
                self._next_index += 1
            if page_object is None:
                return ""
            page = pdfplumber.page.Page(self._pdf, page_object, page_number=index + 1)
            try:
                found = page.extract_tables()
            finally:
                page.close()
        except Exception as error:  # tables are a bonus: the pdfium text is already there
            log.info("pdf_tables_skipped", page=index + 1, error=type(error).__name__)
            self._broken = True
            return ""
        return "\n\n".join(rendered for rendered in map(render_table, found) if rendered)

    def close(self) -> None:
        # not PDF.close(): it builds every page object just to close them
        if self._pdf is not None:
            self._pdf.stream.close()
            self._pdf = self._page_objects = None


def _pdf_pages(data: bytes) -> Iterator[Page]:
    with _PDFIUM_LOCK:
        document = _open_pdf(data)
    tables = _TableReader(data)
    furniture = _RunningLines()
    found_text = False
    try:
        with _PDFIUM_LOCK:
            total = len(document)
        for index in range(total):
            try:
                with _PDFIUM_LOCK:
                    raw, table_like = _read_pdfium_page(document, index)
            except pdfium.PdfiumError as error:
                # one damaged page should not cost the rest of the document
                log.info("pdf_page_unreadable", page=index + 1, error=str(error))
                continue
            text = _reflow(_LEADER_DOTS.sub(" … ", furniture.remove_from(normalise(raw))))
            if table_like:
                rendered = tables.tables(index)
                if rendered:
                    text = f"{text}\n\n{rendered}" if text else rendered
            if text:
                found_text = True
                yield Page(index + 1, text)
    finally:
        tables.close()
        with _PDFIUM_LOCK:
            document.close()
    if not found_text:
        raise ParseError(SCANNED_MESSAGE, NO_TEXT)


_HEADING_STYLE = re.compile(r"^heading (\d)$", re.IGNORECASE)


def _docx_paragraph(paragraph) -> str:
    text = " ".join(paragraph.text.split())
    style = ((paragraph.style.name if paragraph.style is not None else "") or "").lower()
    heading = _HEADING_STYLE.match(style)
    if text and (heading or style == "title"):
        return "#" * max(1, min(6, int(heading.group(1)) if heading else 1)) + " " + text
    return f"- {text}" if text and style.startswith("list") else text


def _docx_table(table) -> str:
    rows: list[list[object]] = []
    for row in table.rows:
        cells, previous = [], None
        for cell in row.cells:
            if cell._tc is not previous:  # a merged cell is repeated once per grid column it spans
                cells.append(cell.text)
            previous = cell._tc
        rows.append(cells)
    return render_table(rows) if rows else ""


def _docx_text(data: bytes) -> str:
    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_DOCX_UNPACKED_BYTES:
                raise ParseError("the DOCX file is too large once unpacked", DOCX_INVALID)
        document = docx.Document(io.BytesIO(data))
        blocks = [_docx_table(item) if isinstance(item, Table) else _docx_paragraph(item)
                  for item in document.iter_inner_content()]
    except ParseError:
        raise
    except Exception:  # zip, XML and python-docx errors all mean the same thing to the user
        raise ParseError(INVALID_DOCX_MESSAGE, DOCX_INVALID) from None
    return normalise("\n\n".join(block for block in blocks if block))


def _csv_text(text: str) -> str:
    """One paragraph per row, "header: value; header: value", so every chunk keeps the column names."""
    sample = text[:CSV_SNIFF_CHARS]
    if len(text) > CSV_SNIFF_CHARS and "\n" in sample:
        sample = sample[:sample.rindex("\n")]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    header: list[str] | None = None
    rows: list[str] = []
    try:
        for row in csv.reader(io.StringIO(text, newline=""), dialect):
            cells = [" ".join(cell.split()) for cell in row]
            if not any(cells):
                continue
            if header is None:
                header = [cell or f"column {position + 1}" for position, cell in enumerate(cells)]
                continue
            parts = [f"{header[position] if position < len(header) else f'column {position + 1}'}: {cell}"
                     for position, cell in enumerate(cells) if cell]
            rows.append("; ".join(parts))
    except csv.Error as error:
        raise ParseError(f"not a valid CSV file: {error}", CSV_INVALID) from None
    if header and not rows:
        rows.append("columns: " + ", ".join(header))
    return normalise("\n\n".join(rows))


def _json_scalar(value: object) -> str:
    return json.dumps(value) if value is None or isinstance(value, bool) else " ".join(str(value).split())


def _load_json(text: str) -> object:
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


def _json_text(text: str) -> str:
    """Flatten to "path.to.key: value" lines (lists as path[0]); iterative, so depth is not a limit."""
    lines: list[str] = []
    stack: list[tuple[str, object]] = [("", _load_json(text))]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(reversed([(f"{path}.{key}" if path else str(key), value) for key, value in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(f"{path}[{position}]", value) for position, value in enumerate(node)]))
        else:
            scalar = _json_scalar(node)
            lines.append(f"{path}: {scalar}" if path else scalar)
    return normalise("\n\n".join(lines))


def iter_pages(data: bytes, mime: str) -> Iterator[Page]:
    """Yield pages with text in order, one at a time; raise ParseError (at the end for NO_TEXT)."""
    if mime == PDF:
        yield from _pdf_pages(data)
        return
    if not data:
        raise ParseError("the file is empty", EMPTY_FILE)
    if mime == DOCX:
        text = _docx_text(data)
    elif mime == CSV:
        text = _csv_text(_decode(data))
    elif mime == JSON:
        text = _json_text(_decode(data))
    elif mime in (TXT, MD):
        text = normalise(_decode(data))
    else:
        raise ParseError(f"unsupported file type: {mime}", UNSUPPORTED_TYPE)
    if not text:
        raise ParseError(BLANK_MESSAGE, NO_TEXT)
    yield Page(1, text)
