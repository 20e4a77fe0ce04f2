"""Chunking with the real MiniLM tokenizer: limits, order, pages, overlap and preferred boundaries."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.ingest.chunk import Chunk, chunk_pages
from services.ingest.filetypes import PDF
from services.ingest.parse import Page, iter_pages
from services.runtime.embeddings import LOCAL_MAX_TOKENS, Tokenizer

DATA = Path(__file__).resolve().parent / "data"
SENTENCE = re.compile(r"Sentence (\d+) on page (\d+)")


@pytest.fixture(scope="module")
def count():
    return Tokenizer.shared().count


def sentence(number: int, page: int) -> str:
    return f"Sentence {number} on page {page} says something about topic {number * 7 % 13}."


def numbered_pages(pages: int, paragraphs: int, sentences: int) -> list[Page]:
    result, number = [], 0
    for page in range(1, pages + 1):
        blocks = []
        for _ in range(paragraphs):
            blocks.append(" ".join(sentence(number + offset, page) for offset in range(sentences)))
            number += sentences
        result.append(Page(page, "\n\n".join(blocks)))
    return result


def check_limits(chunks: list[Chunk], count, max_tokens: int) -> None:
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text and chunk.text == chunk.text.strip()
        assert "  " not in chunk.text
        real = count(chunk.text)
        assert real == chunk.token_count
        assert real <= max_tokens
        assert 1 <= chunk.page_start <= chunk.page_end


def test_limits_order_and_pages(count):
    pages = numbered_pages(pages=12, paragraphs=3, sentences=5)
    chunks = list(chunk_pages(pages, count, max_tokens=200, overlap_tokens=30))
    check_limits(chunks, count, 200)
    assert len(chunks) > 10
    seen = set()
    for chunk in chunks:
        found = [(int(n), int(p)) for n, p in SENTENCE.findall(chunk.text)]
        assert found, chunk.text
        assert {p for _, p in found} <= set(range(chunk.page_start, chunk.page_end + 1))
        assert chunk.page_start == min(p for _, p in found) and chunk.page_end == max(p for _, p in found)
        seen.update(n for n, _ in found)
    assert seen == set(range(12 * 3 * 5))  # nothing lost
    assert any(chunk.page_start < chunk.page_end for chunk in chunks)  # chunks span page breaks
    assert [chunk.page_start for chunk in chunks] == sorted(chunk.page_start for chunk in chunks)


def test_whole_sentences_and_overlap(count):
    chunks = list(chunk_pages(numbered_pages(pages=6, paragraphs=2, sentences=6), count, max_tokens=120,
                              overlap_tokens=30))
    check_limits(chunks, count, 120)
    for chunk in chunks:
        # every sentence fits, so no chunk starts or ends inside one
        assert chunk.text.startswith("Sentence ") and chunk.text.endswith(".")
    for previous, following in itertools.pairwise(chunks):
        first = SENTENCE.search(following.text).group(0) + " "
        assert first in previous.text, "the next chunk should begin with the previous chunk's last sentence(s)"
        repeated = following.text[:following.text.index(first) + len(first)]
        overlap = previous.text[previous.text.index(first):]
        assert following.text.startswith(overlap) and count(overlap) <= 30, repeated


def test_paragraph_boundary_is_preferred(count):
    first = " ".join(sentence(n, 1) for n in range(11))  # ~120 tokens: more than half a chunk
    second = " ".join(sentence(n, 1) for n in range(11, 22))
    assert 100 <= count(first) <= 200 and count(first) + count(second) > 200
    chunks = list(chunk_pages([Page(1, f"{first}\n\n{second}")], count, max_tokens=200, overlap_tokens=0))
    assert [chunk.text for chunk in chunks] == [first, second]


def test_overlap_uses_trailing_words_of_a_long_sentence(count):
    long_sentence = "Word " + " ".join(f"item{n}" for n in range(60)) + "."
    chunks = list(chunk_pages([Page(1, f"{long_sentence} {long_sentence} {long_sentence}")], count,
                              max_tokens=150, overlap_tokens=20))
    check_limits(chunks, count, 150)
    for previous, following in itertools.pairwise(chunks):
        head = following.text.split(" ")[0]
        assert head in previous.text.split(" ")[-20:]


def test_headings_start_chunks(count):
    body = " ".join(sentence(n, 1) for n in range(6))  # a quarter of a chunk or more: worth its own
    text = f"# Install\n\n{body}\n\n# Configure\n\n{body}\n\n# Run\n\n{body}"
    chunks = list(chunk_pages([Page(1, text)], count, max_tokens=200, overlap_tokens=30))
    assert [chunk.text.split("\n")[0] for chunk in chunks] == ["# Install", "# Configure", "# Run"]


def test_giant_word_and_giant_sentence_are_split(count):
    word = "x" * 5000
    chunks = list(chunk_pages([Page(1, word)], count, max_tokens=100, overlap_tokens=30))
    check_limits(chunks, count, 100)
    assert "".join(chunk.text for chunk in chunks) == word

    endless = " ".join(f"token{n}" for n in range(3000))  # no sentence punctuation at all
    chunks = list(chunk_pages([Page(2, endless)], count, max_tokens=200, overlap_tokens=30))
    check_limits(chunks, count, 200)
    assert len(chunks) > 10 and all(chunk.page_start == chunk.page_end == 2 for chunk in chunks)
    assert "token0 " in chunks[0].text and chunks[-1].text.endswith("token2999")


def test_empty_input(count):
    assert list(chunk_pages([], count)) == []
    assert list(chunk_pages([Page(1, "   \n\n  "), Page(2, "")], count)) == []


def test_fits_the_model_window_with_special_tokens(count):
    chunks = list(chunk_pages(numbered_pages(pages=3, paragraphs=2, sentences=8), count))
    assert all(chunk.token_count + 2 <= LOCAL_MAX_TOKENS for chunk in chunks)  # [CLS] and [SEP]


def test_non_additive_counter_is_still_respected():
    # characters are not additive over joins (the joining spaces count): recounting must catch it
    chunks = list(chunk_pages(numbered_pages(pages=3, paragraphs=2, sentences=4), len, max_tokens=300,
                              overlap_tokens=60))
    assert chunks and all(len(chunk.text) <= 300 for chunk in chunks)


def test_pages_are_read_lazily(count):
    pulled = []

    def pages() -> Iterator[Page]:
        for page in numbered_pages(pages=100, paragraphs=2, sentences=6):
            pulled.append(page.number)
            yield page

    chunks = chunk_pages(pages(), count)
    first = next(chunks)
    assert first.index == 0 and len(pulled) <= 3
    assert sum(1 for _ in chunks) > 50


def test_table_rows_and_lists_stay_whole(count):
    rows = "\n".join(f"name{n} | {n} | city{n}" for n in range(80))
    chunks = list(chunk_pages([Page(1, f"Header text.\n\n{rows}")], count, max_tokens=100, overlap_tokens=0))
    check_limits(chunks, count, 100)
    lines = [line for chunk in chunks for line in chunk.text.split("\n")]
    assert all(re.fullmatch(r"name\d+ \| \d+ \| city\d+", line) for line in lines[1:])


def test_r_data_end_to_end(count):
    data = (DATA / "R-data_41p.pdf").read_bytes()
    chunks = list(chunk_pages(iter_pages(data, PDF), count, max_tokens=200, overlap_tokens=30))
    check_limits(chunks, count, 200)
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.page_start, chunk.page_end + 1))
    assert covered == set(range(1, 42))
    stata = [chunk for chunk in chunks if "read.dta" in chunk.text and "versions 5 up to 12" in chunk.text]
    assert stata and all(chunk.page_start <= 20 <= chunk.page_end for chunk in stata)


# -- tables: one chunk each, or rows under a repeated label and header ----------------------------

TABLE_PDF = DATA / "table_branch-libraries_2p.pdf"
CAPTION = "Table 1: Opening hours, staff and loans of the branch libraries"
HEADER = "| Branch | Opening hours per week | Staff | Loans per year | Reading groups |\n|-|-|-|-|-|"
ROW = re.compile(r"^\| [^|]+ \| \d+ \| \d+ \| [\d,]+ \| (Yes|No) \|$")


def table_chunks(chunks: list[Chunk]) -> list[Chunk]:
    return [chunk for chunk in chunks if "| Branch |" in chunk.text]


def test_pdf_table_is_one_chunk_with_its_caption(count):
    chunks = list(chunk_pages(iter_pages(TABLE_PDF.read_bytes(), PDF), count, max_tokens=200, overlap_tokens=30))
    check_limits(chunks, count, 200)
    tables = table_chunks(chunks)
    assert len(tables) == 1 and tables[0].page_start == tables[0].page_end == 1
    lines = tables[0].text.split("\n")
    assert lines[0] == CAPTION and "\n".join(lines[1:3]) == HEADER
    assert len(lines) == 9 and all(ROW.match(line) for line in lines[3:])
    # prose never shares a chunk with the table, nor repeats its rows as overlap
    assert all("|" not in chunk.text for chunk in chunks if chunk not in tables)
    assert any(chunk.text.startswith("Central is by far") for chunk in chunks)


def test_long_pdf_table_is_split_by_rows_under_caption_and_header(count):
    chunks = list(chunk_pages(iter_pages(TABLE_PDF.read_bytes(), PDF), count, max_tokens=90, overlap_tokens=20))
    check_limits(chunks, count, 90)
    tables = table_chunks(chunks)
    assert len(tables) == 2
    rows = []
    for chunk in tables:
        assert chunk.text.startswith(f"{CAPTION}\n{HEADER}\n")
        body = chunk.text.split("\n")[3:]
        assert body and all(ROW.match(line) for line in body)
        rows += body
    assert [row.split(" | ")[0] for row in rows] == [
        "| Central", "| Harbour Street", "| Mill Lane", "| North Green", "| Station Road", "| Westfield"]


def test_csv_chunks_each_repeat_the_header_row(count):
    data = "id,name,city,notes\n" + "".join(f"{n},name {n},city {n % 7},note number {n} of the file\n"
                                             for n in range(300))
    chunks = list(chunk_pages(iter_pages(data.encode(), "text/csv"), count, max_tokens=200, overlap_tokens=30))
    check_limits(chunks, count, 200)
    assert len(chunks) > 10
    seen = []
    for chunk in chunks:
        lines = chunk.text.split("\n")
        assert lines[:2] == ["| id | name | city | notes |", "|-|-|-|-|"]
        assert all(re.fullmatch(r"\| \d+ \| name \d+ \| city \d \| note number \d+ of the file \|", line)
                   for line in lines[2:])
        seen += [int(line.split(" | ")[0][2:]) for line in lines[2:]]
    assert seen == list(range(300))  # every row once, in order, none cut


def test_table_without_caption_takes_the_nearest_heading(count):
    rows = "\n".join(f"| item {n} | {n * 3} |" for n in range(40))
    prose = " ".join(sentence(n, 1) for n in range(4))
    text = f"# Stock\n\n## Warehouse B\n\n{prose}\n\n| Item | Count |\n|---|---|\n{rows}\n\nAfter the table. {prose}"
    chunks = list(chunk_pages([Page(1, text)], count, max_tokens=120, overlap_tokens=30))
    check_limits(chunks, count, 120)
    tables = [chunk for chunk in chunks if "| Item | Count |" in chunk.text]
    assert len(tables) >= 2
    for chunk in tables:
        assert chunk.text.startswith("## Warehouse B\n| Item | Count |\n|---|---|\n| item ")
        assert all(re.fullmatch(r"\| item \d+ \| \d+ \|", line) for line in chunk.text.split("\n")[3:])
    assert chunks[0].text.startswith("# Stock") and "| item" not in chunks[0].text
    assert chunks[-1].text.startswith("After the table.")


def test_docx_table_under_a_heading_keeps_it_in_every_piece(count):
    import io

    import docx

    document = docx.Document()
    document.add_heading("Prices", 2)
    table = document.add_table(rows=61, cols=2)
    for r in range(61):
        for c, value in enumerate(("Fruit", "Price") if r == 0 else (f"fruit {r}", f"{r * 3} EUR")):
            table.cell(r, c).text = value
    document.add_paragraph("Prices change every week.")
    buffer = io.BytesIO()
    document.save(buffer)
    chunks = list(chunk_pages(iter_pages(buffer.getvalue(), "application/vnd.openxmlformats-officedocument."
                                         "wordprocessingml.document"), count, max_tokens=100, overlap_tokens=20))
    check_limits(chunks, count, 100)
    tables, rest = chunks[:-1], chunks[-1]
    assert len(tables) >= 3 and rest.text == "Prices change every week."
    rows = []
    for chunk in tables:
        assert chunk.text.startswith("## Prices\n| Fruit | Price |\n|-|-|\n| fruit ")
        rows += chunk.text.split("\n")[3:]
    assert rows == [f"| fruit {r} | {r * 3} EUR |" for r in range(1, 61)]
