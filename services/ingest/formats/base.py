"""What a file type declares to the registry (services.ingest.formats), and helpers its parser may use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from services.ingest.ocr import OcrOptions
from services.ingest.pages import Page

# a binary format's signature test: (first bytes, lower-cased extension with its dot, whether the name or the
# declared type says it is one of the text formats) -> does the content say it is this format?
Signature = Callable[[bytes, str, bool], bool]
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


@dataclass(frozen=True)
class FileType:
    """One format Docent reads. Binary formats have a `signature`; text formats may have a `sniff`.

    A format's parser is either `text` (the whole file as one page of text) or `pages` (the file's
    pages one at a time, with `count_pages` to count them first).
    """

    mime: str  # the canonical MIME type, stored with the document
    label: str  # how users see it: web UI hints, the "supported: …" of an unsupported-type error
    extensions: tuple[str, ...]  # lower case with the dot; the first is the one `extension_for` returns
    aliases: tuple[str, ...] = ()  # other content types clients declare for it
    signature: Signature | None = None
    sniff: Callable[[bytes], bool] | None = None  # a text format recognised by content when nothing names it
    text: Callable[[bytes], str] | None = None
    pages: Callable[[bytes, OcrOptions | None], Iterator[Page]] | None = None
    count_pages: Callable[[bytes], int] | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.pages is None):
            raise ValueError(f"{self.mime}: a file type has exactly one parser, `text` or `pages`")

    @property
    def binary(self) -> bool:
        return self.signature is not None


def decode_text(data: bytes) -> str:
    """Bytes of a text format as str: UTF-16 with a BOM, UTF-8 (BOM or not), else Windows-1252."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # legacy 8-bit exports (Excel CSV, old notes) are almost always Windows-1252
        return data.decode("cp1252", errors="replace")
