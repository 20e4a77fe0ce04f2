"""Upload type detection: content decides, the name and declared type only break ties."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import docx
import pytest

from services.ingest.filetypes import (
    CSV,
    DOCX,
    JSON,
    MD,
    PDF,
    SUPPORTED_TYPES,
    TXT,
    EmptyFile,
    UnsupportedType,
    detect_type,
    extension_for,
)

DATA = Path(__file__).resolve().parent / "data"
HEAD = 8192
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


def head_of(data: bytes) -> bytes:
    return data[:HEAD]


def docx_bytes() -> bytes:
    document = docx.Document()
    document.add_heading("Quarterly report", 1)
    document.add_paragraph("Revenue grew.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_real_pdf_is_pdf_whatever_its_name():
    head = head_of((DATA / "R-data_41p.pdf").read_bytes())
    assert detect_type("R-data_41p.pdf", "application/pdf", head) == PDF
    assert detect_type("upload", "application/octet-stream", head) == PDF
    assert detect_type("notes.txt", "text/plain", head) == PDF


def test_pdf_magic_after_leading_junk():
    assert detect_type("x.bin", None, b"\r\n\x00garbage" + b"%PDF-1.7\n...") == PDF


def test_text_mentioning_the_pdf_header_is_text():
    assert detect_type("notes.md", None, b"# PDF notes\n\nEvery PDF starts with `%PDF-1.x`.\n") == MD


def test_docx_from_content():
    data = docx_bytes()
    assert detect_type("report.docx", None, head_of(data)) == DOCX
    assert detect_type("report", "application/octet-stream", head_of(data)) == DOCX


def test_docx_name_is_trusted_when_the_zip_entries_are_not_visible():
    assert detect_type("report.docx", None, b"PK\x03\x04" + b"\x14\x00" * 20) == DOCX


def test_other_zips_are_unsupported():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(UnsupportedType, match="spreadsheetml"):
        detect_type("book.xlsx", None, buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(UnsupportedType, match="application/zip"):
        detect_type("notes.zip", None, buffer.getvalue())


@pytest.mark.parametrize(("filename", "declared", "content", "expected"), [
    ("notes.md", None, b"# Title\n\nSome *markdown*.\n", MD),
    ("notes.markdown", None, b"# Title\n", MD),
    ("people.csv", None, b"name,age\nada,36\n", CSV),
    ("people.tsv", None, b"name\tage\nada\t36\n", CSV),
    ("data.json", None, b'{"a": 1}', JSON),
    ("notes.txt", None, b"plain words", TXT),
    ("README", None, b"plain words", TXT),
    ("upload", "text/markdown", b"# Title", MD),
    ("upload", "text/csv; charset=utf-8", b"a,b\n1,2\n", CSV),
    ("upload", None, b'  [{"a": 1}, {"a": 2}]', JSON),
    ("upload", None, b"[1] Introduction to the topic", TXT),
    ("script.py", "text/x-python", b"print('hi')\n", TXT),
])
def test_text_types(filename, declared, content, expected):
    assert detect_type(filename, declared, content) == expected


def test_truncated_json_head_is_json():
    head = (b'{"items": [' + b'{"name": "widget", "price": 3}, ' * 400)[:HEAD]
    assert detect_type("upload", None, head) == JSON


def test_png_named_pdf_is_unsupported():
    with pytest.raises(UnsupportedType) as error:
        detect_type("scan.pdf", "application/pdf", PNG)
    message = str(error.value)
    assert message.startswith("unsupported file type: image/png")
    assert "supported: PDF, DOCX, TXT, MD, CSV, JSON" in message


def test_text_named_pdf_goes_to_the_pdf_parser():
    # the parser then reports "not a valid PDF", which is what the user needs to hear
    data = (DATA / "malformed_not-a-pdf.pdf").read_bytes()
    assert detect_type("malformed_not-a-pdf.pdf", "application/pdf", data) == PDF


def test_empty_file():
    with pytest.raises(EmptyFile, match="the file is empty"):
        detect_type("malformed_empty_0bytes.pdf", "application/pdf", (DATA / "malformed_empty_0bytes.pdf").read_bytes())
    with pytest.raises(EmptyFile):
        detect_type("a.txt", None, b"")


@pytest.mark.parametrize("head", [
    os.urandom(HEAD),
    b"\x7fELF\x02\x01\x01\x00" + bytes(64),
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00",
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
    bytes(range(256)) * 4,
])
def test_binary_is_unsupported(head):
    with pytest.raises(UnsupportedType, match=r"^unsupported file type: "):
        detect_type("notes.txt", "text/plain", head)


def test_text_that_begins_like_a_magic_number_is_text():
    assert detect_type("cars.txt", None, b"BMW sales rose in May.\n") == TXT
    assert detect_type("notes.txt", None, b"MZ is a postcode prefix.\n") == TXT


def test_multibyte_character_cut_at_the_end_of_the_head():
    text = ("Zürich — ünïcödé text " * 1000).encode()
    cut = text.index("—".encode(), HEAD - 100) + 2  # inside the three-byte dash
    head = text[:cut]
    with pytest.raises(UnicodeDecodeError):
        head.decode("utf-8")
    assert detect_type("notes.txt", None, head) == TXT


def test_legacy_8bit_text_is_accepted():
    assert detect_type("export.csv", None, "name;city\nJosé;Málaga\nRenée;Besançon\n".encode("cp1252")) == CSV


def test_utf16_text_with_bom_is_text():
    assert detect_type("notes.txt", None, "hello world".encode("utf-16")) == TXT


def test_supported_types_and_extensions():
    assert set(SUPPORTED_TYPES) == {PDF, DOCX, TXT, MD, CSV, JSON}
    assert extension_for(PDF) == ".pdf"
    assert extension_for(DOCX) == ".docx"
    assert extension_for("image/png") == ""
