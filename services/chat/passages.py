"""A retrieved passage read as answer candidates: sentences that know their heading, paragraph,
and place in their section; headings and question lines recognised; table rows read with their
header. Used by the extractive answerer (services/chat/answer_extractive.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from services.chat.answer import DocumentBlock
from services.chat.text import fold, sentences, shorten, words

MIN_SENTENCE_WORDS = 3
MAX_SENTENCE_CHARS = 400
_HEADING_MARK = re.compile(r"^\s*(#{1,6}\s+|\*\*|Q[:.]\s|Question:\s)")
_LIST_MARK = re.compile(r"^\s*([-*+•]|\d{1,3}[.)])\s+")
_TABLE_RULE = re.compile(r":?-+:?|")
_SYMBOL = re.compile(r"[^\w\s.,'’-]")
_TERMINAL = re.compile(r"[.!?:;\"')\]]$")


@dataclass
class Sentence:
    text: str
    block: DocumentBlock | None
    paragraph: int  # index of its paragraph in the block; sentences of one paragraph continue each other
    in_section: int  # its position under its heading: 0 opens the section (-1: no heading in the block)
    heading: str  # the heading or question line(s) it sits under ("" when none)
    order: int
    code: bool = False
    row: bool = False  # a table row: answers alone, never padded with the rows above it
    score: float = 0.0

    @cached_property
    def lowered(self) -> str:
        return self.text.lower()

    @cached_property
    def terms(self) -> frozenset[str]:
        return terms_of(self.text)

    def may_contain(self, terms: Sequence[str]) -> bool:
        """Cheap pre-check: a folded term is a prefix of the word it came from, so a sentence whose
        lower-cased text holds none of them as a substring matches none of them."""
        return any(term in self.lowered for term in terms)


def terms_of(text: str) -> frozenset[str]:
    return frozenset(fold(word) for word in words(text))


def _is_heading(line: str) -> bool:
    """A line that names what follows rather than saying it: a Markdown heading, a question, or a
    short line without closing punctuation (PDF section titles)."""
    stripped = line.strip()
    if _HEADING_MARK.match(stripped) or stripped.endswith("?"):
        return True
    # a short line starting in lower case is a command or code ("make install-strip"), part of the text
    return (len(stripped.split()) <= 10 and not _TERMINAL.search(stripped) and not _LIST_MARK.match(stripped)
            and not stripped[:1].islower())


def _is_listing(sentence: str) -> bool:
    """A table-of-contents or index line ("read.csv … 10, 32 read.delim … 10"): no answer in it."""
    return sentence.count("…") + sentence.count(". . .") >= 2


TEXT, HEADING, ROW = "text", "heading", "row"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _lines(text: str) -> Iterator[tuple[str, str]]:
    """(text, kind) units of a block. A PDF line often ends with the next section's title ("… by
    write.table. 5. Quoting strings"), which is split off as a heading. A Markdown table row comes
    as one unit "Header: cell; Header: cell" (its header row named each cell), so a quoted row
    reads as an answer and keeps the words a question asks with ("standard size of 'q'")."""
    header: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("|") and line.endswith("|") and len(line) > 1:
            cells = _cells(line)
            if all(_TABLE_RULE.fullmatch(cell) for cell in cells):
                continue
            if not header:
                header = cells
                continue
            pairs = [f"{name}: {cell}" if name else cell for name, cell in zip(header, cells, strict=False) if cell]
            if pairs:
                yield "; ".join(pairs), ROW
            continue
        header = []
        if not line:
            yield "", TEXT
            continue
        if _is_heading(line):
            yield line, HEADING
            continue
        parts = sentences(line)
        tail = parts[-1] if len(parts) > 1 else ""
        title_like = tail[:1].isupper() or tail[:1].isdigit()
        if tail and title_like and not _TERMINAL.search(tail) and len(tail.split()) <= 6:
            yield line[: line.rfind(tail)].strip(), TEXT
            yield tail, HEADING
        else:
            yield line, TEXT


def _looks_like_code(sentence: str) -> bool:
    return sentence.startswith((">>>", "$ ", "...")) or len(_SYMBOL.findall(sentence)) > 0.12 * len(sentence)


def block_sentences(block: DocumentBlock, first_order: int = 0) -> list[Sentence]:
    """The answer candidates of a block, in order, each knowing its heading and paragraph."""
    found: list[Sentence] = []
    headings: list[str] = []
    heading_done = True  # the next heading line starts a new heading (else it extends the current one)
    in_section = -1
    paragraph = 0
    buffer: list[str] = []

    def flush() -> None:
        nonlocal paragraph, in_section, heading_done
        text = " ".join(buffer).strip()
        buffer.clear()
        if not text:
            return
        heading_done = True
        for sentence in sentences(text):
            if sentence.endswith("?") or len(sentence.split()) < MIN_SENTENCE_WORDS or _is_listing(sentence):
                continue
            found.append(Sentence(shorten(sentence, MAX_SENTENCE_CHARS), block, paragraph, in_section,
                                  " ".join(headings), first_order + len(found), code=_looks_like_code(sentence)))
            if in_section >= 0:
                in_section += 1
        paragraph += 1

    for line, kind in _lines(block.text):
        if kind == ROW:
            flush()
            found.append(Sentence(shorten(line, MAX_SENTENCE_CHARS), block, paragraph, in_section,
                                  " ".join(headings), first_order + len(found), row=True))
            heading_done = True
            paragraph += 1
            if in_section >= 0:
                in_section += 1
        elif kind == HEADING:
            flush()
            if heading_done:
                headings.clear()
                heading_done = False
            headings.append(_HEADING_MARK.sub("", line).strip("*# ").strip())
            in_section = 0
        elif not line or _LIST_MARK.match(line) or (buffer and not line[:1].islower()):
            # a blank line, a list item, or a line that does not continue the previous one: a new paragraph
            flush()
            buffer.append(line)
        else:
            buffer.append(line)
    flush()
    return found
