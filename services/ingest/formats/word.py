"""DOCX (Word): one page of text with its headings, lists and tables (as Markdown, with their captions)."""

from __future__ import annotations

import io
import re
import zipfile

from services.ingest.formats.base import ZIP_MAGIC, FileType
from services.ingest.pages import DOCX_INVALID, INVALID_DOCX_MESSAGE, ParseError, normalise
from services.ingest.tables import attach_captions, markdown_table

MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
# a zip bomb would otherwise be inflated into memory by python-docx
MAX_DOCX_UNPACKED_BYTES = 256 * 1024 * 1024
_HEADING_STYLE = re.compile(r"^heading (\d)$", re.IGNORECASE)


def has_signature(head: bytes, extension: str, named_as_text: bool) -> bool:
    # The local file headers carry the member names, and Office writers put the part folders
    # early; with only the first KB visible, trust a .docx name for a zip that is not a sheet or slides.
    if not head.startswith(ZIP_MAGIC):
        return False
    return b"word/" in head or (b"xl/" not in head and b"ppt/" not in head and extension == ".docx")


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


def docx_text(data: bytes) -> str:
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


FILE_TYPE = FileType(mime=MIME, label="DOCX", extensions=(".docx",), signature=has_signature, text=docx_text)
