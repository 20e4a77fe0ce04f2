"""Tables as Markdown: how parsers write them and how the chunker reads them back.

A table travels from parser to chunker as one paragraph: optional label lines (its caption, or a
heading), then a Markdown table whose first row is the header:

    Table 2: Results by city
    | Name | Age | City |
    |-|-|-|
    | Alice | 31 | Oslo |

The chunker keeps such a paragraph whole in a chunk of its own, or splits it by rows with the
label and the header repeated in every piece, so no chunk holds half a row or rows without
their column names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "Table 3", "Table 3.1:", "TABLE IV", "Tab. 2" at the start of a line: a caption, above or below
_CAPTION = re.compile(r"^(table|tab\.)\s*([0-9]+|[ivxlc]+)\b", re.IGNORECASE)
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")
# a paragraph right above a table that short and not a sentence is its title ("Results table:")
MAX_LABEL_CHARS = 120


def _cell(value: object) -> str:
    text = " ".join(str(value).split()) if value is not None else ""
    return text.replace("|", "\\|")


def markdown_row(cells: list[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def separator_row(width: int) -> str:
    # one hyphen a column is valid Markdown, and every "-" is a token of the embedder's budget
    return "|" + "-|" * width


def markdown_table(rows: list[list[object]], label: str = "") -> str:
    """Rows (the first is the header) as a Markdown table, `label` above it; "" for a 1-column or
    1-row "table", which is a framed box rather than a table."""
    cleaned = [[_cell(value) for value in row] for row in rows]
    cleaned = [row for row in cleaned if any(row)]
    if len(cleaned) < 2 or max(len(row) for row in cleaned) < 2:
        return ""
    width = max(len(row) for row in cleaned)
    cleaned = [row + [""] * (width - len(row)) for row in cleaned]
    lines = [markdown_row(cleaned[0]), separator_row(width)]
    lines += [markdown_row(row) for row in cleaned[1:]]
    if label:
        lines.insert(0, " ".join(label.split()))
    return "\n".join(lines)


def is_caption(text: str) -> bool:
    return bool(_CAPTION.match(text.strip())) and len(text) <= 2 * MAX_LABEL_CHARS


def is_title(text: str) -> bool:
    """A short paragraph that labels what follows: a caption, "Results:" or a heading-like line."""
    text = text.strip()
    if not text or len(text) > MAX_LABEL_CHARS or "\n" in text or text.startswith("|"):
        return False
    return is_caption(text) or text.endswith(":") or text.startswith("#") or not text.endswith((".", ",", ";"))


def attach_captions(blocks: list[str], is_table: list[bool]) -> list[str]:
    """Move each table's caption (or the title line right above it) into the table's paragraph."""
    out: list[str] = []
    position = 0
    while position < len(blocks):
        block = blocks[position]
        if is_table[position]:
            label = ""
            if out and is_title(out[-1]):
                label = out.pop()
            elif position + 1 < len(blocks) and not is_table[position + 1] and is_caption(blocks[position + 1]):
                label = blocks[position + 1]
                position += 1
            out.append(f"{label}\n{block}" if label else block)
        else:
            out.append(block)
        position += 1
    return out


@dataclass(frozen=True)
class Table:
    label: str  # the lines above the table in its paragraph: its caption or title, "" when none
    header: str  # the header row and the separator row
    rows: list[str]


def read_table(paragraph: str) -> Table | None:
    """The table in a paragraph written by `markdown_table` (or a Markdown file), else None."""
    lines = [line.strip() for line in paragraph.split("\n") if line.strip()]
    first = next((index for index, line in enumerate(lines) if line.startswith("|")), None)
    if first is None or first + 1 >= len(lines) or not _SEPARATOR.match(lines[first + 1]):
        return None
    rows = lines[first + 2:]
    if not all(row.startswith("|") for row in rows):
        return None
    return Table(" ".join(lines[:first]), f"{lines[first]}\n{lines[first + 1]}", rows)
