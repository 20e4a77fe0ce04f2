"""Build the `tables` corpus from the tables of the Python 3.11 library reference (Debian python3.11-doc HTML).

Build-time only (the PDF needs reportlab, installed in a throwaway venv, not a project dependency):
    python bench/eval/build/tables.py /usr/share/doc/python3.11/html/library bench/eval/corpora/tables
"""

from __future__ import annotations

import csv
import re
import sys
from html.parser import HTMLParser
from pathlib import Path


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None
        self.row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.row = []
            self.tables[-1].append(self.row)
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.row.append(re.sub(r"\s+", " ", "".join(self.cell)).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables(path: Path) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(path.read_text())
    return parser.tables


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(rows[0]), line(["---"] * len(rows[0])), *map(line, rows[1:])])


def build_pdf(path: Path, sections: list[tuple[str, str, list[list[str]]]]) -> None:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    cell = styles["BodyText"].clone("cell", fontSize=8.5, leading=10.5)
    story: list = [Paragraph("Python 3.11 library reference: selected tables", styles["Title"])]
    width = A4[0] - 4 * cm
    for title, intro, rows in sections:
        story += [Paragraph(title, styles["Heading2"]), Paragraph(intro, styles["BodyText"]), Spacer(1, 6)]
        columns = len(rows[0])
        # a column is at least as wide as its longest word; the rest of the width goes by text length
        floors = [max(len(word) for row in rows for word in (row[i] or "x").split()) * 5.2 + 10
                  for i in range(columns)]
        weights = [min(max(len(row[i]) for row in rows), 60) + 4 for i in range(columns)]
        spare = width - sum(floors)
        widths = [floor + spare * weight / sum(weights) for floor, weight in zip(floors, weights, strict=True)]
        data = [[Paragraph(escape(text), cell) for text in row] for row in rows]
        table = Table(data, colWidths=widths, repeatRows=1)
        table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black),
                                   ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                                   ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        story += [table, Spacer(1, 14)]
    SimpleDocTemplate(str(path), pagesize=A4, title="Python 3.11 library reference: selected tables",
                      leftMargin=2 * cm, rightMargin=2 * cm).build(story)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    struct, datetime_, http = (tables(source / f"{name}.html") for name in ("struct", "datetime", "http"))
    logging, codecs = tables(source / "logging.html"), tables(source / "codecs.html")
    write_csv(target / "struct-format-characters.csv", struct[1])
    write_csv(target / "strftime-directives.csv", datetime_[5] + datetime_[6][1:])
    write_csv(target / "http-status-codes.csv", http[0])
    write_csv(target / "codecs-standard-encodings.csv", codecs[4])
    parts = ["# Python 3.11 reference tables: struct and codecs", ""]
    for title, rows in (("struct: byte order, size and alignment (first character of the format string)", struct[0]),
                        ("codecs: error handlers for all codecs", codecs[0]),
                        ("codecs: error handlers for text encodings only", codecs[1]),
                        ("codecs: error handlers for particular codecs", codecs[2]),
                        ("codecs: UTF-8 encoding of Unicode ranges", codecs[3]),
                        ("codecs: Python-specific text encodings", codecs[5]),
                        ("codecs: binary transforms", codecs[6]),
                        ("codecs: text transforms", codecs[7])):
        parts += [f"## {title}", "", markdown_table(rows), ""]
    (target / "struct-and-codecs-tables.md").write_text("\n".join(parts))
    build_pdf(target / "logging-http-datetime-tables.pdf", [
        ("Logging levels", "Numeric values of the logging levels (logging module).", logging[0]),
        ("LogRecord attributes", "Attributes of a LogRecord usable in a format string.", logging[1]),
        ("basicConfig() keyword arguments", "Keyword arguments accepted by logging.basicConfig().", logging[2]),
        ("HTTP methods", "The http.HTTPMethod enumeration.", http[1]),
        ("timedelta attributes", "Ranges of the attributes of datetime.timedelta.", datetime_[0]),
        ("strftime() and strptime()", "Comparison of the two methods.", datetime_[4]),
    ])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
