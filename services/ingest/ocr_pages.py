"""Which PDF pages get OCR'd, at what resolution, and within which limits.

A page is OCR'd when its text layer has almost no letters or digits while images cover a good part
of it: a scan. A page with a real text layer (born-digital, or a scan that was already OCR'd)
keeps its text layer, so a PDF that mixes both kinds needs no setting.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import structlog

from services.ingest.ocr import OcrEngine, OcrOptions, OcrTimeout, OcrUnavailable

log = structlog.get_logger("docent.ingest.ocr")

# Fewer letters and digits than this in the text layer: nothing worth keeping (a stray page
# number, a scanner's stamp). Unmapped glyphs come out of pdfium as U+FFFD or controls, which
# are not counted, so a text layer of garbage counts as empty too.
MIN_TEXT_CHARACTERS = 20
# Images must cover this share of the page: a logo or a photo on an empty page is not a scan.
MIN_IMAGE_COVERAGE = 0.3
# Rendering above the scan's own resolution only interpolates; below this the detector misses
# small print.
MIN_DPI = 150


def needs_ocr(text: str) -> bool:
    return sum(char.isalnum() for char in text) < MIN_TEXT_CHARACTERS


def scan_resolution(page) -> float:
    """The resolution of the page's scanned images (dpi), or 0 when images cover too little of it."""
    width, height = page.get_size()
    if width <= 0 or height <= 0:
        return 0.0
    covered, dpi = 0.0, 0.0
    for image in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=2):
        left, bottom, right, top = image.get_bounds()
        area = max(0.0, min(right, width) - max(left, 0)) * max(0.0, min(top, height) - max(bottom, 0))
        covered += area
        if right - left > 0 and area >= MIN_IMAGE_COVERAGE * width * height:
            dpi = max(dpi, image.get_px_size()[0] * 72 / (right - left))
    if covered < MIN_IMAGE_COVERAGE * width * height:
        return 0.0
    return dpi or float(MIN_DPI)  # several tiles, none large: render at the floor


class PageOcr:
    """OCR of one document's scanned pages: at most `max_pages` of them, each under a time cap."""

    def __init__(self, options: OcrOptions) -> None:
        self.options = options
        self.attempted = 0  # pages handed to OCR
        self.skipped_off = 0  # scanned pages left unread because OCR is off or unavailable
        self._engine: OcrEngine | None = None

    def _get_engine(self) -> OcrEngine | None:
        if self._engine is None:
            try:
                self._engine = OcrEngine.shared(self.options.threads)
            except OcrUnavailable as error:
                log.warning("ocr_unavailable", error=str(error))
                self.options = OcrOptions(enabled=False)
        return self._engine

    def read(self, document: pdfium.PdfDocument, index: int, scan_dpi: float, lock: threading.RLock) -> str:
        if not self.options.enabled or self._get_engine() is None:
            self.skipped_off += 1
            return ""
        if self.attempted >= self.options.max_pages:
            if self.attempted == self.options.max_pages:
                log.warning("ocr_page_limit_reached", page=index + 1, max_pages=self.options.max_pages)
            self.attempted += 1
            return ""
        self.attempted += 1
        dpi = min(float(self.options.dpi), max(float(MIN_DPI), scan_dpi))
        with lock:  # pdfium is not thread-safe; the OCR itself runs outside the lock
            image = _render(document, index, dpi)
        started = time.perf_counter()
        assert self._engine is not None
        try:
            text = self._engine.read(image, self.options.page_timeout_seconds)
        except OcrTimeout as error:
            log.warning("ocr_page_timed_out", page=index + 1, error=str(error))
            return ""
        except Exception as error:  # one page the models choke on should not cost the document
            log.warning("ocr_page_failed", page=index + 1, error=f"{type(error).__name__}: {error}")
            return ""
        log.info("ocr_page", page=index + 1, dpi=round(dpi), characters=len(text),
                 seconds=round(time.perf_counter() - started, 2))
        return text


def _render(document: pdfium.PdfDocument, index: int, dpi: float) -> np.ndarray:
    page = document[index]
    try:
        bitmap = page.render(scale=dpi / 72, grayscale=True)
        try:
            return np.array(bitmap.to_numpy(), copy=True)  # the bitmap's buffer goes with it
        finally:
            bitmap.close()
    finally:
        page.close()
