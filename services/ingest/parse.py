"""Turn an upload into page-numbered text, one page at a time.

PDFs go through services.ingest.parse_pdf; DOCX, CSV, JSON, TXT and MD become one page of text
with their structure kept (headings, Markdown tables with their captions, "path.to.key: value").
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator

from services.ingest.filetypes import CSV, DOCX, JSON, MD, PDF, TXT
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
from services.ingest.parse_pdf import count_pdf_pages, pdf_pages
from services.ingest.tables import attach_captions, markdown_row, markdown_table, separator_row

# a zip bomb would otherwise be inflated into memory by python-docx
MAX_DOCX_UNPACKED_BYTES = 256 * 1024 * 1024
CSV_SNIFF_CHARS = 16384


def count_pages(data: bytes, mime: str) -> int:
    """Page count without extracting anything; raises ParseError for encrypted or unreadable PDFs."""
    return count_pdf_pages(data) if mime == PDF else 1


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # legacy 8-bit exports (Excel CSV, old notes) are almost always Windows-1252
        return data.decode("cp1252", errors="replace")



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
    return markdown_table(rows) if rows else ""


def _docx_text(data: bytes) -> str:
    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_DOCX_UNPACKED_BYTES:
                raise ParseError("the DOCX file is too large once unpacked", DOCX_INVALID)
        document = docx.Document(io.BytesIO(data))
        items = [(_docx_table(item), True) if isinstance(item, Table) else (_docx_paragraph(item), False)
                 for item in document.iter_inner_content()]
    except ParseError:
        raise
    except Exception:  # zip, XML and python-docx errors all mean the same thing to the user
        raise ParseError(INVALID_DOCX_MESSAGE, DOCX_INVALID) from None
    items = [(block, table) for block, table in items if block]
    blocks = attach_captions([block for block, _ in items], [table for _, table in items])
    return normalise("\n\n".join(blocks))


def _csv_text(text: str) -> str:
    """One Markdown table, header first: the chunker repeats the header row in every chunk of it."""
    sample = text[:CSV_SNIFF_CHARS]
    if len(text) > CSV_SNIFF_CHARS and "\n" in sample:
        sample = sample[:sample.rindex("\n")]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows: list[list[str]] = []
    try:
        for row in csv.reader(io.StringIO(text, newline=""), dialect):
            if any(cell.strip() for cell in row):
                rows.append(row)
    except csv.Error as error:
        raise ParseError(f"not a valid CSV file: {error}", CSV_INVALID) from None
    if not rows:
        return ""
    width = max(len(row) for row in rows)
    header = [" ".join(cell.split()) or f"column {position + 1}"
              for position, cell in enumerate(rows[0] + [""] * (width - len(rows[0])))]
    if len(rows) == 1 or width == 1:  # a header alone, or one column: still a table to the chunker
        lines = [markdown_row(header), separator_row(width)]
        lines += [markdown_row([" ".join(cell.split()).replace("|", "\\|") for cell in row]) for row in rows[1:]]
        return "\n".join(lines)
    return markdown_table([header, *rows[1:]])


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


def iter_pages(data: bytes, mime: str, ocr: OcrOptions | None = None) -> Iterator[Page]:
    """Yield pages with text in order, one at a time; raise ParseError (at the end for NO_TEXT).

    `ocr` sets how scanned PDF pages are OCR'd (default: on, with the default limits).
    """
    if mime == PDF:
        yield from pdf_pages(data, ocr)
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
