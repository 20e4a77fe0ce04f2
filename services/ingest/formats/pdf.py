"""PDF: pages with their numbers, tables and OCR of scanned pages (services.ingest.parse_pdf)."""

from __future__ import annotations

from services.ingest.formats.base import FileType
from services.ingest.parse_pdf import count_pdf_pages, pdf_pages

MIME = "application/pdf"


def has_signature(head: bytes, extension: str, named_as_text: bool) -> bool:
    # readers accept junk before the header; a text file merely mentioning "%PDF-" is not a PDF
    return head.startswith(b"%PDF-") or (b"%PDF-" in head[:1024] and not named_as_text)


FILE_TYPE = FileType(mime=MIME, label="PDF", extensions=(".pdf",), aliases=("application/x-pdf",),
                     signature=has_signature, pages=pdf_pages, count_pages=count_pdf_pages)
