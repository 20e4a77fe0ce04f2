"""Ruled tables in PDFs: found by pdfplumber, written as Markdown where they stand on the page.

pdfium's text layer reads a table as loose lines of cell text. On a page where pdfplumber finds a
ruled table, the characters inside the table's box are taken out of the text and the table goes
in their place, as one Markdown paragraph with its caption (or the title line above it).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from services.ingest.tables import attach_captions, markdown_table

log = structlog.get_logger("docent.ingest.parse")

TABLE_CACHE_PAGES = 32
# stands in the text for table k until paragraphs are rebuilt: a private-use character that no
# normalisation step touches
MARK = "\ue000"
_MARKED = re.compile(f"{MARK}(\\d+){MARK}")


@dataclass(frozen=True)
class FoundTable:
    bbox: tuple[float, float, float, float]  # left, top, right, bottom; pdfplumber's top-down coordinates
    markdown: str


class TableReader:
    """pdfplumber, opened on the first page that needs it and walked forward one page at a time."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pdf = None
        self._page_objects: Iterator | None = None
        self._next_index = 0
        self._pages_read = 0
        self._broken = False

    def tables(self, index: int) -> list[FoundTable]:
        if self._broken:
            return []
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
                return []
            page = pdfplumber.page.Page(self._pdf, page_object, page_number=index + 1)
            try:
                found = [(table.bbox, table.extract()) for table in page.find_tables()]
            finally:
                page.close()
        except Exception as error:  # tables are a bonus: the pdfium text is already there
            log.info("pdf_tables_skipped", page=index + 1, error=type(error).__name__)
            self._broken = True
            return []
        tables = [FoundTable(tuple(bbox), markdown_table(rows)) for bbox, rows in found]
        return [table for table in tables if table.markdown]  # a framed box stays prose

    def close(self) -> None:
        # not PDF.close(): it builds every page object just to close them
        if self._pdf is not None:
            self._pdf.stream.close()
            self._pdf = self._page_objects = None


def text_around_tables(document, index: int, tables: list[FoundTable]) -> str:
    """The page's text with each table's characters replaced by one MARK<k>MARK line (k: its index)."""
    page = document[index]
    try:
        height = page.get_height()
        textpage = page.get_textpage()
        try:
            boxes = [(left, height - bottom, right, height - top)  # to pdfium's bottom-up coordinates
                     for left, top, right, bottom in (table.bbox for table in tables)]
            parts: list[str] = []
            placed: set[int] = set()
            start, current = 0, -1  # the run being collected: -1 is text, k is table k
            total = textpage.count_chars()
            for position in range(total + 1):
                owner = -1
                if position < total:
                    left, bottom, right, top = textpage.get_charbox(position)
                    x, y = (left + right) / 2, (bottom + top) / 2
                    owner = next((k for k, (x0, y0, x1, y1) in enumerate(boxes)
                                  if x0 <= x <= x1 and y0 <= y <= y1 and right > left), -1)
                if position == total or owner != current:
                    if current == -1 and position > start:
                        parts.append(textpage.get_text_range(start, position - start))
                    elif current >= 0 and current not in placed:
                        parts.append(f"\n{MARK}{current}{MARK}\n")
                        placed.add(current)
                    start, current = position, owner
            # a table whose text pdfium did not see (drawn as paths) still goes at the end
            parts.extend(f"\n{MARK}{k}{MARK}\n" for k in range(len(tables)) if k not in placed)
        finally:
            textpage.close()
    finally:
        page.close()
    return "".join(parts)


def put_tables_back(text: str, tables: list[FoundTable]) -> str:
    """Replace the marks in reflowed page text with the Markdown tables, captions attached."""
    blocks: list[str] = []
    is_table: list[bool] = []
    for paragraph in text.split("\n\n"):
        pieces = _MARKED.split(paragraph)
        for position, piece in enumerate(pieces):
            piece = piece.strip() if position % 2 == 0 else tables[int(piece)].markdown
            if piece:
                blocks.append(piece)
                is_table.append(position % 2 == 1)
    return "\n\n".join(attach_captions(blocks, is_table))
