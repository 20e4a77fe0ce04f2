"""Decide what an upload is from its first bytes, so bad files are refused before they are stored.

The extension and the client's declared type are only hints: browsers send `application/octet-stream`
for half of what they upload, and a PNG renamed to .pdf must not reach the PDF parser as a PDF.
"""

from __future__ import annotations

import mimetypes
import os

from services.ingest import formats
from services.ingest.formats import csv_table, json_data, markdown, pdf, text, word
from services.ingest.formats.base import ZIP_MAGIC, FileType

# the MIME types callers name (stored with each document; see services.ingest.formats for all of a type)
PDF = pdf.MIME
DOCX = word.MIME
TXT = text.MIME
MD = markdown.MIME
CSV = csv_table.MIME
JSON = json_data.MIME
# MIME type -> label of the registered types
SUPPORTED_TYPES: dict[str, str] = formats.REGISTRY.labels()

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
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_CONTROL_BYTES = frozenset(set(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D} | {0x7F})


class UnsupportedType(ValueError):
    """The upload is not a type Docent can read; the message is shown to the user."""


class EmptyFile(ValueError):
    """The upload has no bytes at all."""

    def __init__(self, message: str = "the file is empty") -> None:
        super().__init__(message)


def extension_for(mime: str) -> str:
    file_type = formats.REGISTRY.by_mime.get(mime)
    return file_type.extensions[0] if file_type else ""


def _unsupported(kind: str) -> UnsupportedType:
    supported = ", ".join(formats.REGISTRY.labels().values())
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


def _zip_kind(head: bytes) -> str:
    """What a zip no registered format claims is, to name it in the error."""
    if b"xl/" in head:
        return "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    if b"ppt/" in head:
        return "application/vnd.openxmlformats-officedocument.presentationml.presentation"
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


def _declared(declared: str | None) -> str:
    return (declared or "").split(";")[0].strip().lower()


def detect_type(filename: str, declared: str | None, head: bytes) -> str:
    """Return the canonical MIME type of an upload, or raise UnsupportedType / EmptyFile."""
    if not head:
        raise EmptyFile()
    registry = formats.REGISTRY
    extension = os.path.splitext(filename or "")[1].lower()
    declared_type = _declared(declared)
    hinted: FileType | None = registry.by_extension.get(extension) or registry.by_declared.get(declared_type)
    named_as_text = hinted is not None and not hinted.binary

    for file_type in registry.file_types:
        if file_type.signature is not None and file_type.signature(head, extension, named_as_text):
            return file_type.mime
    if head.startswith(ZIP_MAGIC):
        raise _unsupported(_zip_kind(head))
    binary_kind = _binary_kind(head)
    if binary_kind is not None:
        raise _unsupported(binary_kind)
    # Named as a binary format but without its signature: let the parser say the file is damaged,
    # which is what a user with a broken PDF needs to hear.
    if hinted is not None and hinted.binary:
        return hinted.mime
    if _looks_binary(head):
        guessed = declared_type if declared_type and declared_type != "application/octet-stream" else None
        guessed = guessed or mimetypes.guess_type(filename or "")[0] or "application/octet-stream (binary data)"
        raise _unsupported(guessed)

    if hinted is not None:
        return hinted.mime
    for file_type in registry.file_types:
        if file_type.sniff is not None and file_type.sniff(head):
            return file_type.mime
    return registry.fallback.mime
