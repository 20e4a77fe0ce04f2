"""The file-type registry: detection and parsing know a format only through its registration."""

from __future__ import annotations

import pytest

from services.ingest import formats
from services.ingest.filetypes import SUPPORTED_TYPES, UnsupportedType, detect_type, extension_for
from services.ingest.formats import REGISTRY, Registry, markdown, text
from services.ingest.formats.base import FileType
from services.ingest.pages import normalise
from services.ingest.parse import count_pages, iter_pages

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _rst_text(data: bytes) -> str:
    return normalise(data.decode("utf-8"))


RST = FileType(mime="text/x-rst", label="RST", extensions=(".rst",), aliases=("text/prs.fallenstein.rst",),
               text=_rst_text)
PNG = FileType(mime="image/png", label="PNG", extensions=(".png",),
               signature=lambda head, extension, named_as_text: head.startswith(b"\x89PNG\r\n\x1a\n"),
               text=lambda data: f"an image of {len(data)} bytes")


@pytest.fixture
def with_rst_and_png(monkeypatch):
    monkeypatch.setattr(formats, "REGISTRY", Registry((*REGISTRY.file_types, RST, PNG), fallback=REGISTRY.fallback))


def test_the_registered_types_in_order() -> None:
    assert list(REGISTRY.labels().values()) == ["PDF", "DOCX", "TXT", "MD", "CSV", "JSON"]
    assert SUPPORTED_TYPES == REGISTRY.labels()
    assert REGISTRY.by_extension[".markdown"] is markdown.FILE_TYPE
    assert REGISTRY.by_declared["text/plain"] is text.FILE_TYPE


def test_a_registered_type_is_detected_parsed_and_named(with_rst_and_png) -> None:
    assert detect_type("notes.rst", None, b"Title\n=====\n\nBody.") == "text/x-rst"
    assert detect_type("notes", "text/prs.fallenstein.rst", b"Body.") == "text/x-rst"
    assert extension_for("text/x-rst") == ".rst"
    assert [page.text for page in iter_pages(b"Title\n=====", "text/x-rst")] == ["Title\n====="]
    assert count_pages(b"Title", "text/x-rst") == 1
    # a binary format's signature comes before the table of formats Docent refuses
    assert detect_type("scan.png", "image/png", PNG_HEAD) == "image/png"
    with pytest.raises(UnsupportedType, match="supported: PDF, DOCX, TXT, MD, CSV, JSON, RST, PNG"):
        detect_type("a.gif", None, b"GIF89a\x01\x00\x01\x00\x00\x00")


def test_an_unregistered_type_is_refused() -> None:
    with pytest.raises(UnsupportedType, match="image/png"):
        detect_type("scan.png", "image/png", PNG_HEAD)
    assert detect_type("notes.rst", None, b"Title\n=====") == text.MIME  # unknown names are read as text


def test_registrations_may_not_collide() -> None:
    twin = FileType(mime="text/x-other", label="OTHER", extensions=(".md",), text=_rst_text)
    with pytest.raises(ValueError, match=r"extension \.md "):
        Registry((*REGISTRY.file_types, twin), fallback=REGISTRY.fallback)
    with pytest.raises(ValueError, match="exactly one parser"):
        FileType(mime="x/y", label="Y", extensions=(".y",))
