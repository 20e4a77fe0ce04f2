"""CSV (and TSV): one Markdown table, header first; the chunker repeats the header row in every chunk of it."""

from __future__ import annotations

import csv
import io

from services.ingest.formats.base import FileType, decode_text
from services.ingest.pages import CSV_INVALID, ParseError
from services.ingest.tables import markdown_row, markdown_table, separator_row

MIME = "text/csv"
CSV_SNIFF_CHARS = 16384


def csv_text(data: bytes) -> str:
    text = decode_text(data)
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


FILE_TYPE = FileType(mime=MIME, label="CSV", extensions=(".csv", ".tsv"),
                     aliases=("application/csv", "text/tab-separated-values"), text=csv_text)
