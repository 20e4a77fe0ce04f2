"""From OCR'd lines to page text: missing spaces restored, lines grouped into blocks and paragraphs.

The recogniser reads one detected line at a time and returns its boxes in no useful order, so
reading order and paragraph breaks are rebuilt from geometry alone: fragments on one row are
joined, lines stacked closely with overlapping extents form a block (a column, a caption),
blocks are read top to bottom (side by side: left to right), and inside a block a short line
or an indented one marks a paragraph boundary.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cmp_to_key
from statistics import median


@dataclass
class Line:
    x0: float
    y0: float
    x1: float
    y1: float
    text: str

    @property
    def height(self) -> float:
        return max(1.0, self.y1 - self.y0)


@dataclass
class _Block:
    lines: list[Line] = field(default_factory=list)

    @property
    def x0(self) -> float:
        return min(line.x0 for line in self.lines)

    @property
    def x1(self) -> float:
        return max(line.x1 for line in self.lines)

    @property
    def y0(self) -> float:
        return self.lines[0].y0

    @property
    def y1(self) -> float:
        return self.lines[-1].y1


# The multilingual recogniser often reads "said,but" or "it.She": add the space print always has.
_AFTER_COMMA = re.compile(r"(?<=[a-z][,;:!?])(?=[A-Za-z])")
# after a full stop only between a word of 2+ lower-case letters and a capitalised word: keeps
# "e.g.", "U.S.", "3.5" and "example.com" as they are
_AFTER_STOP = re.compile(r"(?<=[a-z]{2}\.)(?=[A-Z])")
# a blank narrower than this share of the line's usual word space is a gap between letters
WORD_GAP_SHARE = 0.75


def _centres(characters: list) -> list[float]:
    return [(box[0][0] + box[1][0]) / 2 for box in characters]


def _widest(blanks: list[tuple[float, float]], left: float, right: float) -> float:
    return max((end - start for start, end in blanks if left < (start + end) / 2 < right), default=0.0)


def word_gaps(text: str, characters: list | None, blanks: list[tuple[float, float]]) -> list[float]:
    """Widths of the blanks where the recogniser did put a space: this line's word spacing."""
    if not characters or len(characters) != len(text) or not blanks:
        return []
    centres = _centres(characters)
    return [width for position in range(1, len(text) - 1)
            if text[position] == " " and text[position - 1] != " " and text[position + 1] != " "
            and (width := _widest(blanks, centres[position - 1], centres[position + 1])) > 0]


def fix_spaces(text: str, characters: list | None, blanks: list[tuple[float, float]], word_gap: float) -> str:
    """Restore the spaces the recogniser dropped ("operatorsfor").

    `characters` are its character boxes (page coordinates, approximate: CTC columns), `blanks`
    the x ranges of the line without ink (page pixels, exact), `word_gap` the line's usual space.
    A blank of at least WORD_GAP_SHARE of a word space between two characters' centres is a space.
    """
    if characters and len(characters) == len(text) and blanks and word_gap > 0:
        centres = _centres(characters)
        out: list[str] = []
        for position, char in enumerate(text):
            if position and char != " " and text[position - 1] != " ":
                wide = _widest(blanks, centres[position - 1], centres[position]) >= WORD_GAP_SHARE * word_gap
                # a drop capital ("W" of "WELL") stands apart from the rest of its word
                drop_capital = position == 1 and text[0].isupper() and char.isupper()
                if wide and not drop_capital:
                    out.append(" ")
            out.append(char)
        text = "".join(out)
    text = unicodedata.normalize("NFKC", text)  # full-width punctuation and Ⅲ-style numerals
    text = _AFTER_STOP.sub(" ", _AFTER_COMMA.sub(" ", text))
    return " ".join(text.split())


def _same_row(a: Line, b: Line) -> bool:
    overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
    near = max(a.x0, b.x0) - min(a.x1, b.x1) < 1.5 * max(a.height, b.height)
    return overlap > 0.5 * min(a.height, b.height) and near


def _rows(lines: list[Line]) -> list[Line]:
    """Join fragments that the detector split on one printed row ("Chapter" + "III")."""
    rows: list[Line] = []
    for line in sorted(lines, key=lambda item: (item.y0 + item.y1) / 2):
        for row in rows:
            if _same_row(row, line):
                left, right = (row, line) if row.x0 <= line.x0 else (line, row)
                row.text = f"{left.text} {right.text}"
                row.x0, row.x1 = min(row.x0, line.x0), max(row.x1, line.x1)
                row.y0, row.y1 = min(row.y0, line.y0), max(row.y1, line.y1)
                break
        else:
            rows.append(Line(line.x0, line.y0, line.x1, line.y1, line.text))
    return sorted(rows, key=lambda item: item.y0)


def _blocks(rows: list[Line]) -> list[_Block]:
    blocks: list[_Block] = []
    for line in rows:
        best, best_gap = None, None
        for block in blocks:
            last = block.lines[-1]
            gap = line.y0 - last.y1
            similar = max(line.height, last.height) <= 2 * min(line.height, last.height)
            overlaps = min(line.x1, last.x1) > max(line.x0, last.x0)
            if overlaps and similar and gap < min(line.height, last.height) and (best_gap is None or gap < best_gap):
                best, best_gap = block, gap
        if best is None:
            blocks.append(_Block([line]))
        else:
            best.lines.append(line)
    return blocks


def _reading_order(a: _Block, b: _Block) -> int:
    side_by_side = min(a.x1, b.x1) <= max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)
    if side_by_side:  # columns: the left one first
        return -1 if a.x0 < b.x0 else 1
    return -1 if a.y0 < b.y0 else (1 if a.y0 > b.y0 else 0)


def _paragraphs(block: _Block) -> list[str]:
    lines = block.lines
    right = block.x1
    typical = median(line.height for line in lines)
    paragraphs: list[str] = []
    current = ""
    for position, line in enumerate(lines):
        if current:
            previous = lines[position - 1]
            # indented against both neighbours: a drop capital or a wrap around a figure is not an indent
            neighbours = [previous.x0] + ([lines[position + 1].x0] if position + 1 < len(lines) else [])
            indented = line.x0 - max(neighbours) > 0.8 * typical
            short_before = previous.x1 < right - 2 * typical
            if indented or short_before:
                paragraphs.append(current)
                current = ""
        if not current:
            current = line.text
        elif re.search(r"[a-z]-$", current) and line.text[:1].islower():
            current = current[:-1] + line.text  # "be-" + "have": a word hyphenated at the line end
        else:
            current = f"{current} {line.text}"
    if current:
        paragraphs.append(current)
    return paragraphs


def arrange(lines: list[Line]) -> str:
    """The page's text in reading order, one blank line between paragraphs."""
    lines = [line for line in lines if line.text.strip()]
    if not lines:
        return ""
    blocks = sorted(_blocks(_rows(lines)), key=cmp_to_key(_reading_order))
    return "\n\n".join(paragraph for block in blocks for paragraph in _paragraphs(block))

