"""Split page text into token-bounded, overlapping chunks, streaming.

Text is cut into pieces (sentences; word or character runs when a sentence alone is too long),
each counted once with the real tokenizer. Pieces are packed greedily; when the next piece does
not fit, the chunk is cut at the last paragraph start if that keeps it at least half full,
otherwise between sentences. The next chunk starts with the previous chunk's trailing sentences
(at most `overlap_tokens`), so a fact split by a cut is still whole in one of the two chunks.
WordPiece counts are additive over whitespace-joined pieces, so the packed sum is the real count;
every chunk is still counted for real before it is yielded and split further if over.

A Markdown table (services.ingest.tables) is a chunk of its own, never packed with prose: whole
when it fits, else split by rows with its label (caption, or else the nearest heading above) and
header row repeated in every piece.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from services.ingest.parse import Page
from services.ingest.tables import MAX_LABEL_CHARS, Table, read_table

_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
# a line that stands alone rather than continuing the previous one: headings, list items, table rows
_OWN_LINE = re.compile(r"^(#{1,6} |[-*+•] |\d{1,3}[.)] |\|)|\s\|\s")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|(?<=[.!?][\"')\]])\s+(?=[\"'(\[]?[A-Z0-9])")
_CONTINUES_PAGE = re.compile(r"^[a-z(,;]")
_ENDS_SENTENCE = re.compile(r"[.!?:\"')\]]$")
# fill estimated windows to this share of the limit, so a recount rarely has to shrink them
_FILL = 0.9


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    page_start: int
    page_end: int
    token_count: int


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    tokens: int
    page: int
    breaks_before: bool  # starts a paragraph or a line of its own: a preferred place to cut
    heading: bool = False
    table: bool = False  # a whole table, or rows of one under its label and header: a chunk of its own


@dataclass
class _Context:
    heading: str = ""  # the last heading seen, the label of a table that has no caption


def _split_long(text: str, tokens: int, count: Callable[[str], int], limit: int) -> Iterator[tuple[str, int]]:
    """Cut an over-long sentence into word runs (a giant word into character runs) of <= limit tokens.

    Window sizes are estimated from the tokens-per-word ratio and recounted, so the cost is a few
    tokenizer calls per output piece rather than one per word.
    """
    words = text.split(" ")
    if len(words) == 1:
        units, glue = list(text), ""
    else:
        units, glue = words, " "
    per_unit = max(tokens, 1) / len(units)
    start = 0
    while start < len(units):
        window = max(1, int(limit * _FILL / per_unit))
        while True:
            candidate = glue.join(units[start:start + window])
            counted = count(candidate)
            if counted <= limit or window == 1:
                break
            window = max(1, min(window - 1, int(window * limit * _FILL / counted)))
        if counted > limit and glue:
            # a single word over the limit: split it by characters
            yield from _split_long(candidate, counted, count, limit)
        elif candidate.strip():
            yield candidate, counted
        start += window


def _units(paragraph: str) -> list[str]:
    """Lines of a paragraph, re-joined where a line only wraps the previous one."""
    units: list[str] = []
    for line in paragraph.split("\n"):
        line = line.strip()
        if not line:
            continue
        if units and not _OWN_LINE.search(line):
            units[-1] = f"{units[-1]} {line}"
        else:
            units.append(line)
    return units


def _pieces(page: Page, count: Callable[[str], int], limit: int, continues: bool,
            context: _Context) -> Iterator[_Piece]:
    for paragraph_number, paragraph in enumerate(_PARAGRAPHS.split(page.text)):
        table = read_table(paragraph)
        if table is not None:
            label = table.label
            if label.startswith("#"):  # a heading the parser took as the table's title still heads what follows
                context.heading = label
            if len(label) > 2 * MAX_LABEL_CHARS:  # prose glued to a table in a Markdown file: not a label
                yield from _text_pieces(label, page.number, count, limit, False, context)
                label = ""
            yield from _table_pieces(label or context.heading, table, count, limit, page.number)
            continue
        # a sentence running on from the previous page is not a paragraph start
        joined = continues and paragraph_number == 0
        yield from _text_pieces(paragraph, page.number, count, limit, joined, context)


def _text_pieces(paragraph: str, page: int, count: Callable[[str], int], limit: int, joined: bool,
                 context: _Context) -> Iterator[_Piece]:
    for unit_number, unit in enumerate(_units(paragraph)):
        heading = unit.startswith("#") and unit.lstrip("#").startswith(" ")
        if heading:
            context.heading = " ".join(unit.split())
        first = True
        for sentence in _SENTENCE_BREAK.split(unit):
            sentence = " ".join(sentence.split())
            if not sentence:
                continue
            tokens = count(sentence)
            parts = _split_long(sentence, tokens, count, limit) if tokens > limit else ((sentence, tokens),)
            for text, part_tokens in parts:
                starts = first and not (joined and unit_number == 0)
                yield _Piece(text, part_tokens, page, starts, heading and first)
                first = False


def _table_pieces(label: str, table: Table, count: Callable[[str], int], limit: int,
                  page: int) -> Iterator[_Piece]:
    """The table as one piece, or as pieces of whole rows each under the label and header row."""
    head = f"{label}\n{table.header}" if label else table.header
    if label and count(head) > limit // 2:  # a label that long would crowd out the rows
        head = table.header
    head_tokens = count(head)
    if head_tokens > limit // 2:  # a header row that wide: the rows have to go without it
        head, head_tokens = "", 0
    if not table.rows:
        yield from _counted_table([head], count, limit, page)
        return
    group: list[str] = []
    total = head_tokens
    for row in table.rows:
        tokens = count(row)
        if group and total + tokens > limit:
            yield from _counted_table([head, *group], count, limit, page)
            group, total = [], head_tokens
        if head_tokens + tokens > limit:  # one row longer than a chunk: cut it, each part under the header
            for part, _ in _split_long(row, tokens, count, max(1, limit - head_tokens - 1)):
                yield from _counted_table([head, part], count, limit, page)
            continue
        group.append(row)
        total += tokens
    if group:
        yield from _counted_table([head, *group], count, limit, page)


def _counted_table(lines: list[str], count: Callable[[str], int], limit: int, page: int) -> Iterator[_Piece]:
    """Count the piece for real; a counter that is not additive over lines may need it split again."""
    head, rows = lines[0], lines[1:]
    while True:
        text = "\n".join(line for line in [head, *rows] if line)
        tokens = count(text)
        if tokens <= limit or len(rows) <= 1:
            break
        middle = len(rows) // 2
        yield from _counted_table([head, *rows[:middle]], count, limit, page)
        rows = rows[middle:]
    yield _Piece(text, tokens, page, True, table=True)


def _join(pieces: list[_Piece]) -> str:
    parts: list[str] = []
    for position, piece in enumerate(pieces):
        if position:
            parts.append("\n" if piece.breaks_before else " ")
        parts.append(piece.text)
    return "".join(parts)


class _Packer:
    def __init__(self, count: Callable[[str], int], max_tokens: int, overlap_tokens: int) -> None:
        self.count = count
        self.max = max_tokens
        self.overlap = overlap_tokens
        self.pending: list[_Piece] = []
        self.total = 0
        self.carried = 0  # leading pieces of `pending` repeated from the previous chunk
        self.index = 0

    def add(self, piece: _Piece) -> Iterator[Chunk]:
        if piece.table:
            # after what is pending (unless that is only overlap, or only the heading the table repeats
            # as its label), alone, and carrying no overlap on
            fresh = self.pending[self.carried:]
            if fresh and not all(p.heading and p.text in piece.text for p in fresh):
                yield from self._emit(self.pending)
            self._reset([])
            yield from self._emit([piece])
            return
        if piece.heading:
            # a heading starts a section: cut before it unless that leaves a scrap, and carry no
            # overlap from the previous section into it
            fresh = self.total - sum(p.tokens for p in self.pending[:self.carried])
            if fresh >= self.max // 4:
                yield from self._emit(self.pending)
                self._reset([])
            elif fresh == 0:
                self._reset([])
        just_cut = False
        while self.pending and self.total + piece.tokens > self.max:
            overlap_total = sum(p.tokens for p in self.pending[:self.carried])
            if self.carried and (self.carried == len(self.pending)
                                 or (just_cut and self.total - overlap_total + piece.tokens <= self.max)):
                # right after a cut, the repeated text gives way rather than forcing a second cut
                self.total -= self.pending.pop(0).tokens
                self.carried -= 1
                continue
            cut = self._cut(piece)
            done, rest = self.pending[:cut], self.pending[cut:]
            yield from self._emit(done)
            overlap = self._overlap(done)
            self._reset(overlap + rest)
            self.carried = len(overlap)
            just_cut = True
        self.pending.append(piece)
        self.total += piece.tokens

    def finish(self) -> Iterator[Chunk]:
        if len(self.pending) > self.carried:
            yield from self._emit(self.pending)
        self._reset([])

    def _reset(self, pieces: list[_Piece]) -> None:
        self.pending = pieces
        self.total = sum(piece.tokens for piece in pieces)
        self.carried = 0

    def _cut(self, incoming: _Piece) -> int:
        """Where to end the chunk: before `incoming` if it starts a paragraph, else at the last
        paragraph start that leaves the chunk at least half full, else between sentences."""
        if incoming.breaks_before:
            return len(self.pending)
        running, best = 0, len(self.pending)
        for position, piece in enumerate(self.pending):
            if position > self.carried and piece.breaks_before and running >= self.max // 2:
                best = position
            running += piece.tokens
        return best

    def _overlap(self, done: list[_Piece]) -> list[_Piece]:
        if self.overlap <= 0 or not done:
            return []
        taken: list[_Piece] = []
        budget = self.overlap
        for piece in reversed(done):
            if piece.tokens > budget:
                break
            taken.append(replace(piece, heading=False))
            budget -= piece.tokens
        if taken:
            return taken[::-1]
        return self._trailing_words(done[-1])

    def _trailing_words(self, piece: _Piece) -> list[_Piece]:
        """The end of a sentence too long to repeat whole, cut at a word boundary."""
        words = piece.text.split(" ")
        if len(words) < 2:
            return []
        take = min(len(words) - 1, max(1, int(self.overlap * _FILL * len(words) / max(piece.tokens, 1))))
        while take > 0:
            text = " ".join(words[-take:])
            tokens = self.count(text)
            if tokens <= self.overlap:
                return [_Piece(text, tokens, piece.page, False)]
            take = min(take - 1, int(take * self.overlap * _FILL / tokens))
        return []

    def _emit(self, pieces: list[_Piece]) -> Iterator[Chunk]:
        if not pieces:
            return
        text = _join(pieces)
        tokens = self.count(text)
        if tokens > self.max:
            # only when the counter is not additive over joined pieces: halve and recount
            if len(pieces) > 1:
                middle = len(pieces) // 2
                yield from self._emit(pieces[:middle])
                yield from self._emit(pieces[middle:])
            else:
                piece = pieces[0]
                for part, part_tokens in _split_long(piece.text, tokens, self.count, self.max):
                    yield from self._emit([_Piece(part, part_tokens, piece.page, False)])
            return
        yield Chunk(self.index, text, min(p.page for p in pieces), max(p.page for p in pieces), tokens)
        self.index += 1


def chunk_pages(pages: Iterable[Page], count_tokens: Callable[[str], int], max_tokens: int = 200,
                overlap_tokens: int = 30) -> Iterator[Chunk]:
    """Chunks of at most `max_tokens` (by `count_tokens`), in order, reading `pages` lazily."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    packer = _Packer(count_tokens, max_tokens, max(0, min(overlap_tokens, max_tokens // 2)))
    context = _Context()
    previous_text = ""
    for page in pages:
        continues = bool(previous_text) and not _ENDS_SENTENCE.search(previous_text) \
            and bool(_CONTINUES_PAGE.match(page.text.lstrip()))
        for piece in _pieces(page, count_tokens, max_tokens, continues, context):
            yield from packer.add(piece)
        previous_text = page.text.rstrip()[-1:] if page.text.strip() else previous_text
    yield from packer.finish()
