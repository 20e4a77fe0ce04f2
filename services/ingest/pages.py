"""What every parser produces and how it fails: pages of normalised text, or a ParseError.

Every failure a user can cause is a ParseError with a stable reason and a message worth showing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PDF_ENCRYPTED = "PDF_ENCRYPTED"
PDF_INVALID = "PDF_INVALID"
NO_TEXT = "NO_TEXT"
EMPTY_FILE = "EMPTY_FILE"
DOCX_INVALID = "DOCX_INVALID"
CSV_INVALID = "CSV_INVALID"
JSON_INVALID = "JSON_INVALID"
UNSUPPORTED_TYPE = "UNSUPPORTED_TYPE"

ENCRYPTED_MESSAGE = "the PDF is password-protected"
INVALID_PDF_MESSAGE = "not a valid PDF (the file is damaged, truncated or is not a PDF)"
SCANNED_MESSAGE = "no extractable text (the PDF has no text layer and no scanned page to OCR)"
OCR_OFF_MESSAGE = "no extractable text (the document is a scanned image and OCR is turned off or not installed)"
OCR_EMPTY_MESSAGE = "no extractable text (OCR found no text on the scanned pages)"
BLANK_MESSAGE = "no extractable text (the document is blank)"
INVALID_DOCX_MESSAGE = "not a valid DOCX file (the file is damaged or is not a Word document)"


class ParseError(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class Page:
    number: int  # 1-based; formats without pages are page 1
    text: str


# pdfium marks a hyphen it judged to be line-breaking with \x02; \xad is the Unicode soft hyphen
_SOFT_HYPHEN_BREAK = re.compile(r"[\x02\xad\ufffe] *\n *")
_HYPHEN_BREAK = re.compile(r"(?<=[a-z])- *\n *(?=[a-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\x80-\x9f\xad\ufffe\uffff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """Join hyphenated line breaks, drop control characters, collapse spaces, keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n\n")
    text = _SOFT_HYPHEN_BREAK.sub("", text)
    text = _HYPHEN_BREAK.sub("", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
