"""The file types Docent reads: one module per type, registered here with one line each.

A module declares its `FILE_TYPE` (services.ingest.formats.base.FileType): MIME type, label,
extensions, declared-type aliases, content signature or sniffing, and parser. Detection
(services.ingest.filetypes) and parsing (services.ingest.parse) look types up in REGISTRY only.
The order matters: binary signatures are tried in it (PDF before DOCX), and error messages list
the labels in it.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.ingest.formats import csv_table, json_data, markdown, pdf, text, word
from services.ingest.formats.base import FileType


class Registry:
    """Registered file types in order, looked up by MIME type, extension or declared content type."""

    def __init__(self, file_types: Iterable[FileType], fallback: FileType) -> None:
        self.file_types = tuple(file_types)
        # what a text upload that no name, declared type or sniffing claims is read as
        self.fallback = fallback
        self.by_mime = _index(((t.mime, t) for t in self.file_types), "MIME type")
        self.by_extension = _index(((e, t) for t in self.file_types for e in t.extensions), "extension")
        self.by_declared = _index(((d, t) for t in self.file_types for d in (t.mime, *t.aliases)), "declared type")
        if fallback not in self.file_types or fallback.binary:
            raise ValueError("the fallback is one of the registered text formats")

    def labels(self) -> dict[str, str]:
        """MIME type → label, in registration order."""
        return {file_type.mime: file_type.label for file_type in self.file_types}


def _index(pairs: Iterable[tuple[str, FileType]], what: str) -> dict[str, FileType]:
    index: dict[str, FileType] = {}
    for key, file_type in pairs:
        if key in index:
            raise ValueError(f"{what} {key} is registered by both {index[key].mime} and {file_type.mime}")
        index[key] = file_type
    return index


REGISTRY = Registry((
    pdf.FILE_TYPE,
    word.FILE_TYPE,
    text.FILE_TYPE,
    markdown.FILE_TYPE,
    csv_table.FILE_TYPE,
    json_data.FILE_TYPE,
), fallback=text.FILE_TYPE)
