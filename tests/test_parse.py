"""Parsing real and generated files into page-numbered text, and every way a file can be bad."""

from __future__ import annotations

import csv
import inspect
import io
import json
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docx
import pytest

from services.ingest.filetypes import CSV, DOCX, JSON, MD, PDF, TXT
from services.ingest.ocr import OcrOptions
from services.ingest.parse import (
    CSV_INVALID,
    DOCX_INVALID,
    EMPTY_FILE,
    JSON_INVALID,
    NO_TEXT,
    PDF_ENCRYPTED,
    PDF_INVALID,
    UNSUPPORTED_TYPE,
    Page,
    ParseError,
    count_pages,
    iter_pages,
    normalise,
)

DATA = Path(__file__).resolve().parent / "data"


# -- a minimal PDF writer: Helvetica text and stroked lines are all these tests need -------------

def make_pdf(contents: list[str]) -> bytes:
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"",
                            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    kids = []
    for content in contents:
        stream = content.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % len(objects))
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % kid for kid in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def text_page(lines: list[str], y: int = 740, size: int = 10, leading: int = 15) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    shown = "".join(f"({escape(line)}) Tj T* " for line in lines)
    return f"BT /F1 {size} Tf {leading} TL 72 {y} Td {shown}ET"


def table_page(rows: list[list[str]], x0: int = 72, y0: int = 640, width: int = 120, height: int = 20) -> str:
    columns = len(rows[0])
    parts = ["0.5 w"]
    parts += [f"{x0} {y0 - r * height} m {x0 + columns * width} {y0 - r * height} l S" for r in range(len(rows) + 1)]
    parts += [f"{x0 + c * width} {y0} m {x0 + c * width} {y0 - len(rows) * height} l S" for c in range(columns + 1)]
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            parts.append(f"BT /F1 10 Tf {x0 + c * width + 4} {y0 - (r + 1) * height + 6} Td ({cell}) Tj ET")
    return "\n".join(parts)


def reason_of(data: bytes, mime: str) -> ParseError:
    with pytest.raises(ParseError) as error:
        list(iter_pages(data, mime))
    return error.value


# -- real PDFs ----------------------------------------------------------------------------------

def test_r_data_pages_and_text():
    data = (DATA / "R-data_41p.pdf").read_bytes()
    assert count_pages(data, PDF) == 41
    pages = list(iter_pages(data, PDF))
    assert [page.number for page in pages] == list(range(1, 42))
    page20 = pages[19].text
    assert "read.dta" in page20 and "Stata" in page20
    assert "Files from versions 5 up to 12 of Stata" in page20
    # pdfium's hyphenation marks are joined, and no control characters survive
    assert "differences in the formats" in page20
    assert not any(ord(ch) < 32 and ch != "\n" for page in pages for ch in page.text)


def test_pdfs_parse_concurrently_in_threads():
    # Dramatiq runs several actor threads per worker process; pdfium itself is not thread-safe
    data = (DATA / "R-data_41p.pdf").read_bytes()
    expected = list(iter_pages(data, PDF))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: list(iter_pages(data, PDF)), range(4)))
    assert all(result == expected for result in results)


def test_encrypted_pdf():
    data = (DATA / "encrypted_userpw_aes256_R-data_41p.pdf").read_bytes()
    error = reason_of(data, PDF)
    assert error.reason == PDF_ENCRYPTED
    assert "password-protected" in str(error)
    with pytest.raises(ParseError) as counted:
        count_pages(data, PDF)
    assert counted.value.reason == PDF_ENCRYPTED


def test_scanned_pdf_without_ocr_has_no_text():
    # with OCR (the default) it is read: tests/test_ocr.py
    data = (DATA / "scan_gutenberg-huckfinn-p29_1p.pdf").read_bytes()
    assert count_pages(data, PDF) == 1
    with pytest.raises(ParseError) as error:
        list(iter_pages(data, PDF, OcrOptions(enabled=False)))
    assert error.value.reason == NO_TEXT
    assert "no extractable text" in error.value.message


def test_text_named_pdf_is_not_a_valid_pdf():
    error = reason_of((DATA / "malformed_not-a-pdf.pdf").read_bytes(), PDF)
    assert error.reason == PDF_INVALID
    assert str(error).startswith("not a valid PDF")
    assert error.message == str(error)


@pytest.mark.timeout(60)
def test_truncated_pdf_fails_cleanly_or_recovers():
    data = (DATA / "malformed_truncated55pct_R-intro_113p.pdf").read_bytes()
    try:
        pages = list(iter_pages(data, PDF))
    except ParseError as error:
        assert error.reason in (PDF_INVALID, NO_TEXT)
    else:
        assert pages and all(page.text for page in pages)


def test_empty_pdf():
    assert reason_of(b"", PDF).reason == EMPTY_FILE


# -- generated PDFs -----------------------------------------------------------------------------

def test_ruled_table_rows_are_rendered():
    rows = [["Name", "Age", "City"], ["Alice", "31", "Oslo"], ["Bob", "27", "Lima"]]
    data = make_pdf([text_page(["An introduction without any table."]),
                     text_page(["Results table:"]) + "\n" + table_page(rows)])
    pages = list(iter_pages(data, PDF))
    assert [page.number for page in pages] == [1, 2]
    assert "|" not in pages[0].text
    # a Markdown table under its title line, in place of the loose cell text pdfium would give
    assert pages[1].text == "Results table:\n| Name | Age | City |\n|-|-|-|\n| Alice | 31 | Oslo |\n| Bob | 27 | Lima |"


def test_libreoffice_table_is_markdown_in_place_with_its_caption():
    pages = list(iter_pages((DATA / "table_branch-libraries_2p.pdf").read_bytes(), PDF))
    assert [page.number for page in pages] == [1, 2]
    paragraphs = pages[0].text.split("\n\n")
    assert paragraphs[0] == "Branch libraries of Eastmoor" and paragraphs[1].startswith("The town of Eastmoor")
    assert paragraphs[2] == "\n".join([
        "Table 1: Opening hours, staff and loans of the branch libraries",
        "| Branch | Opening hours per week | Staff | Loans per year | Reading groups |",
        "|-|-|-|-|-|",
        "| Central | 62 | 24 | 181,400 | Yes |",
        "| Harbour Street | 40 | 7 | 52,300 | Yes |",
        "| Mill Lane | 36 | 5 | 38,950 | No |",
        "| North Green | 44 | 9 | 61,020 | Yes |",
        "| Station Road | 30 | 4 | 27,480 | No |",
        "| Westfield | 48 | 11 | 74,615 | Yes |",
    ])
    assert paragraphs[3].startswith("Central is by far the busiest branch") and len(paragraphs) == 4
    assert pages[0].text.count("Harbour Street") == 1  # the cells are not repeated as prose


def test_blank_pages_are_skipped_and_numbers_kept():
    data = make_pdf(["", text_page(["Only the second page has words."]), ""])
    assert count_pages(data, PDF) == 3
    pages = list(iter_pages(data, PDF))
    assert pages == [Page(2, "Only the second page has words.")]


def test_pdf_paragraphs_are_rebuilt_from_lines():
    lines = ["This first paragraph is long enough to wrap onto a second", "line and then it ends here.",
             "A second paragraph follows on a line of its own and it also", "wraps before it ends."]
    text = next(iter_pages(make_pdf([text_page(lines)]), PDF)).text
    assert text == ("This first paragraph is long enough to wrap onto a second line and then it ends here.\n\n"
                    "A second paragraph follows on a line of its own and it also wraps before it ends.")


def test_pdf_pages_stream_with_bounded_memory():
    lines = [f"Line {i} of page {{page}} has enough words to look like a line of a real manual." for i in range(45)]
    data = make_pdf([text_page([line.format(page=n) for line in lines], y=760, size=9, leading=16)
                     for n in range(1, 301)])
    list(iter_pages(make_pdf([text_page(["warm-up"])]), PDF))  # imports allocate; keep them out of the peak

    pages = iter_pages(data, PDF)
    assert inspect.isgenerator(pages)
    tracemalloc.start()
    try:
        first = next(pages)
        numbers, total = [first.number], len(first.text)
        for page in pages:
            numbers.append(page.number)
            total += len(page.text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert numbers == list(range(1, 301))
    assert "Line 44 of page 300" in page.text
    # holding every page would need at least the whole text (~1 MB); one page at a time needs a few
    assert total > 900_000
    assert peak < total // 4, f"peak {peak} bytes for {total} bytes of text"


# -- DOCX ---------------------------------------------------------------------------------------

def docx_bytes() -> bytes:
    document = docx.Document()
    document.add_heading("Title", 1)
    document.add_paragraph("An opening   paragraph.")
    table = document.add_table(rows=2, cols=3)
    for r, values in enumerate([("a", "b", "c"), ("1", "2", "3")]):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    document.add_heading("Details", 2)
    document.add_paragraph("First point", style="List Bullet")
    document.add_paragraph("")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def test_docx_headings_and_tables_in_order():
    pages = list(iter_pages(docx_bytes(), DOCX))
    assert len(pages) == 1 and pages[0].number == 1
    assert pages[0].text == ("# Title\n\nAn opening paragraph.\n\n| a | b | c |\n|-|-|-|\n| 1 | 2 | 3 |\n\n"
                             "## Details\n\n- First point")
    assert count_pages(docx_bytes(), DOCX) == 1


def test_docx_table_caption_below_moves_above_it():
    document = docx.Document()
    document.add_paragraph("Prices of the season.")
    table = document.add_table(rows=2, cols=2)
    for r, values in enumerate([("Fruit", "Price"), ("Apple", "2")]):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    document.add_paragraph("Table 4: Fruit prices", style="Caption")
    buffer = io.BytesIO()
    document.save(buffer)
    text = next(iter_pages(buffer.getvalue(), DOCX)).text
    assert text == "Prices of the season.\n\nTable 4: Fruit prices\n| Fruit | Price |\n|-|-|\n| Apple | 2 |"


@pytest.mark.parametrize("data", [b"PK\x03\x04 not really a zip", b"plain text named .docx"])
def test_invalid_docx(data):
    error = reason_of(data, DOCX)
    assert error.reason == DOCX_INVALID
    assert "not a valid DOCX" in str(error)


def test_blank_docx_has_no_text():
    buffer = io.BytesIO()
    docx.Document().save(buffer)
    assert reason_of(buffer.getvalue(), DOCX).reason == NO_TEXT


# -- text, markdown, CSV, JSON ------------------------------------------------------------------

def test_text_is_one_normalised_page():
    data = "\ufeffFirst  line with infor-\nmation.\r\n\r\n\r\n\r\nNext\tparagraph.\x00\n".encode()
    assert list(iter_pages(data, TXT)) == [Page(1, "First line with information.\n\nNext paragraph.")]


def test_legacy_encoding_falls_back_to_cp1252():
    assert next(iter_pages("Café “quoted”".encode("cp1252"), TXT)).text == "Café “quoted”"


def test_markdown_keeps_headings():
    text = next(iter_pages(b"# Guide\n\nSome text.\n\n## Install\n\n- step one\n- step two\n", MD)).text
    assert text == "# Guide\n\nSome text.\n\n## Install\n\n- step one\n- step two"


@pytest.mark.parametrize("data", [b"   \n\t\n", b"\x00\x00"])
def test_blank_text_has_no_text(data):
    error = reason_of(data, TXT)
    assert error.reason == NO_TEXT and "no extractable text" in str(error)


def test_empty_text_file():
    assert reason_of(b"", TXT).reason == EMPTY_FILE


def test_csv_is_one_markdown_table():
    data = b"name,age,city\nx,3,Oslo\ny,,\"Lima, Peru\"\n\nz,1,a|b\n"
    assert next(iter_pages(data, CSV)).text == \
        "| name | age | city |\n|-|-|-|\n| x | 3 | Oslo |\n| y | | Lima, Peru |\n| z | 1 | a\\|b |"


def test_csv_dialect_is_sniffed():
    data = "name;city\nJosé;Málaga\n".encode("cp1252")
    assert next(iter_pages(data, CSV)).text == "| name | city |\n|-|-|\n| José | Málaga |"


def test_csv_header_only_and_one_column():
    assert next(iter_pages(b"name,age\n", CSV)).text == "| name | age |\n|-|-|"
    assert next(iter_pages(b"name\nx\ny\n", CSV)).text == "| name |\n|-|\n| x |\n| y |"


def test_invalid_csv():
    data = b'name,notes\nx,"' + b"y" * (csv.field_size_limit() + 10) + b'"\n'
    error = reason_of(data, CSV)
    assert error.reason == CSV_INVALID and str(error).startswith("not a valid CSV file")


def test_json_is_flattened_to_paths():
    data = json.dumps({"a": {"b": [1, {"c": None}]}, "d": True, "e": "two\nlines"}).encode()
    assert next(iter_pages(data, JSON)).text == "a.b[0]: 1\n\na.b[1].c: null\n\nd: true\n\ne: two lines"


def test_json_scalar_and_json_lines():
    assert next(iter_pages(b'"just a string"', JSON)).text == "just a string"
    assert next(iter_pages(b'{"id": 1}\n{"id": 2}\n', JSON)).text == "[0].id: 1\n\n[1].id: 2"


def test_deep_json_does_not_overflow():
    data = ("[" * 5000 + "]" * 5000).encode()
    try:
        list(iter_pages(data, JSON))
    except ParseError as error:
        assert error.reason in (JSON_INVALID, NO_TEXT)


@pytest.mark.parametrize("data", [b"{bad json", b'{"a": 1,}'])
def test_invalid_json(data):
    error = reason_of(data, JSON)
    assert error.reason == JSON_INVALID
    assert str(error).startswith("not valid JSON") and "line 1" in str(error)


def test_unsupported_mime():
    assert reason_of(b"data", "image/png").reason == UNSUPPORTED_TYPE
    assert count_pages(b"data", TXT) == 1


def test_normalise():
    assert normalise("infor-\nmation differ\x02\r\nences  a\u00a0b\n\n\n\nc") == "information differences a b\n\nc"
    assert normalise("well-\nKnown") == "well-\nKnown"


def test_parse_error_shape():
    error = ParseError("the PDF is password-protected", PDF_ENCRYPTED)
    assert (str(error), error.message, error.reason) == ("the PDF is password-protected", str(error), PDF_ENCRYPTED)


def test_page_numbers_and_running_headers_are_dropped() -> None:
    from services.ingest.parse_pdf import _RunningLines

    pages = {page.number: page.text for page in iter_pages((DATA / "R-data_41p.pdf").read_bytes(),
                                                             "application/pdf")}
    assert pages[36].startswith("9 Reading Excel spreadsheets")  # was "32\n\n9 Reading Excel…"
    assert pages[35].startswith("8 Network interfaces")
    furniture = _RunningLines()
    assert furniture.remove_from("Chapter 2: Spreadsheets 7\nFirst body line.\nSecond body line.").startswith("Chapter")
    second = furniture.remove_from("Chapter 2: Spreadsheets 8\nOther body line.\nMore text.")
    assert second == "Other body line.\nMore text."
    assert furniture.remove_from("Page 3 of 9") == "Page 3 of 9"  # a page's only line is content
