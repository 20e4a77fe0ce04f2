"""Decide what an upload is from its first bytes, so bad files are refused before they are stored.

The extension and the client's declared type are only hints: browsers send `application/octet-stream`
for half of what they upload, and a PNG renamed to .pdf must not reach the PDF parser as a PDF.
"""

from __future__ import annotations

import json
import mimetypes
import os

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
TXT = "text/plain"
MD = "text/markdown"
CSV = "text/csv"
JSON = "application/json"

SUPPORTED_TYPES: dict[str, str] = {PDF: "PDF", DOCX: "DOCX", TXT: "TXT", MD: "MD", CSV: "CSV", JSON: "JSON"}
_EXTENSIONS = {PDF: ".pdf", DOCX: ".docx", TXT: ".txt", MD: ".md", CSV: ".csv", JSON: ".json"}

_BY_EXTENSION = {
    ".pdf": PDF, ".docx": DOCX, ".txt": TXT, ".text": TXT, ".md": MD, ".markdown": MD,
    ".csv": CSV, ".tsv": CSV, ".json": JSON,
}
_BY_DECLARED = {
    PDF: PDF, "application/x-pdf": PDF, DOCX: DOCX, MD: MD, "text/x-markdown": MD, CSV: CSV,
    "application/csv": CSV, "text/tab-separated-values": CSV, JSON: JSON, "text/json": JSON, TXT: TXT,
}

# (magic, offset, type named in the error) for common binary uploads we cannot read
_BINARY_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"BM", 0, "image/bmp"),
    (b"WEBP", 8, "image/webp"),
    (b"ftyp", 4, "video/mp4"),
    (b"ID3", 0, "audio/mpeg"),
    (b"OggS", 0, "audio/ogg"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "application/msword"),  # legacy OLE2 .doc/.xls/.ppt
    (b"{\\rtf", 0, "application/rtf"),
    (b"\x1f\x8b", 0, "application/gzip"),
    (b"7z\xbc\xaf\x27\x1c", 0, "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", 0, "application/vnd.rar"),
    (b"\x7fELF", 0, "application/x-executable"),
    (b"MZ", 0, "application/x-msdownload"),
    (b"\x00asm", 0, "application/wasm"),
    (b"SQLite format 3\x00", 0, "application/vnd.sqlite3"),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_CONTROL_BYTES = frozenset(set(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D} | {0x7F})


class UnsupportedType(ValueError):
    """The upload is not a type Docent can read; the message is shown to the user."""


class EmptyFile(ValueError):
    """The upload has no bytes at all."""

    def __init__(self, message: str = "the file is empty") -> None:
        super().__init__(message)


def extension_for(mime: str) -> str:
    return _EXTENSIONS.get(mime, "")


def _unsupported(kind: str) -> UnsupportedType:
    supported = ", ".join(SUPPORTED_TYPES.values())
    return UnsupportedType(f"unsupported file type: {kind}; supported: {supported}")


def _binary_kind(head: bytes) -> str | None:
    for magic, offset, kind in _BINARY_MAGIC:
        if head[offset:offset + len(magic)] != magic:
            continue
        if kind == "image/webp" and not head.startswith(b"RIFF"):
            continue
        # "BM", "MZ", "ID3" also begin ordinary sentences: a printable magic needs binary data after it
        printable = all(0x20 <= byte < 0x7F for byte in magic)
        if printable and kind != "application/rtf" and not _looks_binary(head):
            continue
        return kind
    return None


def _zip_kind(head: bytes, extension: str) -> str:
    # The local file headers carry the member names, and Office writers put the part folders
    # early; with only the first KB visible, trust a .docx name for a zip.
    if b"word/" in head:
        return DOCX
    if b"xl/" in head:
        return "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    if b"ppt/" in head:
        return "application/vnd.openxmlformats-officedocument.presentationml.presentation"
    if extension == ".docx":
        return DOCX
    if b"mimetypeapplication/vnd.oasis.opendocument" in head:
        return "application/vnd.oasis.opendocument"
    return "application/zip"


def _looks_binary(head: bytes) -> bool:
    if head.startswith(_UTF16_BOMS):
        return False
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
        return False
    except UnicodeDecodeError as error:
        # the head is a prefix of the file: a multibyte character may be cut at its end
        if error.reason == "unexpected end of data" and error.start >= len(head) - 3:
            return False
    # Not UTF-8. A legacy 8-bit text (cp1252 CSV exports) has few high bytes and no control
    # bytes; compressed or executable data has plenty of both.
    controls = sum(1 for byte in head if byte in _CONTROL_BYTES)
    high = sum(1 for byte in head if byte >= 0x80)
    return controls > len(head) // 100 or high > len(head) * 3 // 10


def _looks_like_json(head: bytes) -> bool:
    text = head.lstrip()
    if not text.startswith((b"{", b"[")):
        return False
    try:
        json.loads(head.decode("utf-8-sig"))
        return True
    except (UnicodeDecodeError, ValueError):
        pass
    # a truncated head of a large object: `{"key"` is JSON-shaped enough; `[1] Introduction` is not
    return len(head) >= 4096 and text.startswith(b"{") and text[1:].lstrip().startswith(b'"')


def _declared(declared: str | None) -> str:
    return (declared or "").split(";")[0].strip().lower()


def detect_type(filename: str, declared: str | None, head: bytes) -> str:
    """Return the canonical MIME type of an upload, or raise UnsupportedType / EmptyFile."""
    if not head:
        raise EmptyFile()
    extension = os.path.splitext(filename or "")[1].lower()
    declared_type = _declared(declared)
    hinted = _BY_EXTENSION.get(extension) or _BY_DECLARED.get(declared_type)

    # readers accept junk before the header; a text file merely mentioning "%PDF-" is not a PDF
    if head.startswith(b"%PDF-") or (b"%PDF-" in head[:1024] and hinted not in (TXT, MD, CSV, JSON)):
        return PDF
    if head.startswith(_ZIP_MAGIC):
        kind = _zip_kind(head, extension)
        if kind == DOCX:
            return DOCX
        raise _unsupported(kind)
    binary_kind = _binary_kind(head)
    if binary_kind is not None:
        raise _unsupported(binary_kind)
    # Named as a PDF/DOCX but without its signature: let the parser say the file is damaged,
    # which is what a user with a broken PDF needs to hear.
    if hinted in (PDF, DOCX):
        return hinted
    if _looks_binary(head):
        guessed = declared_type if declared_type and declared_type != "application/octet-stream" else None
        guessed = guessed or mimetypes.guess_type(filename or "")[0] or "application/octet-stream (binary data)"
        raise _unsupported(guessed)

    by_extension = _BY_EXTENSION.get(extension)
    if by_extension is not None:
        return by_extension
    by_declared = _BY_DECLARED.get(declared_type)
    if by_declared is not None:
        return by_declared
    if _looks_like_json(head):
        return JSON
    return TXT
