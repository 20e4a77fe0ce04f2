"""OCR for PDF pages without a usable text layer: RapidOCR on onnxruntime, in-process and offline.

The detection and recognition models (PP-OCRv4 mobile, ONNX; plus a line-orientation model that
RapidOCR loads and this module does not use) ship inside the rapidocr-onnxruntime wheel under
rapidocr_onnxruntime/models/; that version has no download code at all, and their sha256 is
checked at load like the embedder's. One engine per process, used by
one page at a time (a lock): on 2 cores, two concurrent OCR runs would only slow each other and
the embedder down.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import ClassVar

import numpy as np
import structlog

from services.ingest.ocr_layout import Line, arrange, fix_spaces, word_gaps
from services.runtime.embedding_models import file_sha256

log = structlog.get_logger("docent.ingest.ocr")

MODEL_SHA256 = {
    "ch_PP-OCRv4_det_infer.onnx": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    "ch_PP-OCRv4_rec_infer.onnx": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
}
# Recognised lines below this confidence are mostly illustration strokes read as letters.
MIN_LINE_SCORE = 0.5
# The detector would otherwise find up to 1000 boxes on a noisy halftone; a dense page has ~60 lines.
MAX_LINES_PER_PAGE = 400
# rows of a detected line box searched for ink between words (shares of its height, from the top):
# the box reaches well above and below the letters, into the neighbouring lines
BAND = (0.2, 0.8)


class OcrUnavailable(RuntimeError):
    pass


class OcrTimeout(RuntimeError):
    pass


@dataclass(frozen=True)
class OcrOptions:
    """How the PDF parser OCRs pages; built from Settings by the worker (see `from_settings`)."""

    enabled: bool = True
    dpi: int = 200
    max_pages: int = 50  # per document; later scanned pages are skipped (and logged)
    page_timeout_seconds: float = 120.0  # wall clock: a dense page takes ~25 s on 2 busy cores
    threads: int = 0  # 0: as many as the embedder uses (min(cores, 2))

    @classmethod
    def from_settings(cls, settings) -> OcrOptions:
        return cls(enabled=settings.ocr_enabled, dpi=settings.ocr_dpi, max_pages=settings.ocr_max_pages,
                   page_timeout_seconds=settings.ocr_page_timeout_seconds, threads=settings.embedding_threads)


class _Deadline:
    """Wraps an onnxruntime session so every run first checks the page's deadline.

    RapidOCR runs detection once and recognition in batches of 6 lines, so a page that overruns
    stops within one model run of its cap instead of holding the worker (and its lease) hostage.
    """

    def __init__(self, session) -> None:
        self._session = session
        self.deadline = float("inf")

    def run(self, output_names, input_feed, run_options=None):
        if time.monotonic() > self.deadline:
            raise OcrTimeout("OCR page time cap reached")
        return self._session.run(output_names, input_feed, run_options)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


class OcrEngine:
    _instances: ClassVar[dict[int, OcrEngine]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, threads: int = 0) -> None:
        try:
            import rapidocr_onnxruntime
            from rapidocr_onnxruntime import RapidOCR
        except ModuleNotFoundError as error:
            if error.name != "rapidocr_onnxruntime":  # opencv needs system libraries a slim image may lack
                raise OcrUnavailable(f"rapidocr-onnxruntime cannot be imported: {error}") from None
            # pyproject.toml installs it only below Python 3.13: no release of it supports 3.13
            raise OcrUnavailable("rapidocr-onnxruntime is not installed (it has no release for Python 3.13 and "
                                 "later), so scanned pages cannot be read") from None
        except ImportError as error:  # opencv needs system libraries a slim image may lack
            raise OcrUnavailable(f"rapidocr-onnxruntime cannot be imported: {error}") from None
        models = Path(rapidocr_onnxruntime.__file__).parent / "models"
        for name, expected in MODEL_SHA256.items():
            path = models / name
            if not path.exists():
                raise OcrUnavailable(f"OCR model file missing: {path} (run `make setup`)")
            if file_sha256(path) != expected:
                raise OcrUnavailable(f"OCR model file {path} has an unexpected sha256; refusing to load it")
        threads = threads or min(os.cpu_count() or 1, 2)
        self._engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1,
                                det_max_candidates=MAX_LINES_PER_PAGE)
        self._guards = []
        # the three OrtInferSession wrappers of rapidocr-onnxruntime 1.4.x (pinned), each holding .session
        for wrapper in (self._engine.text_det.infer, self._engine.text_cls.infer, self._engine.text_rec.session):
            guard = _Deadline(wrapper.session)
            wrapper.session = guard
            self._guards.append(guard)
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, threads: int = 0) -> OcrEngine:
        with cls._instances_lock:
            if threads not in cls._instances:
                cls._instances[threads] = cls(threads)
            return cls._instances[threads]

    def read(self, image: np.ndarray, timeout_seconds: float = 120.0) -> str:
        """The page's text, paragraphs separated by blank lines; raises OcrTimeout past the cap."""
        with self._lock:
            deadline = time.monotonic() + timeout_seconds
            for guard in self._guards:
                guard.deadline = deadline
            try:
                # no line-orientation classifier: pdfium renders pages upright (it applies /Rotate),
                # and on the Huckleberry Finn scan the classifier turned a good line upside down
                result, _ = self._engine(image, return_word_box=True, use_cls=False)
            except Exception as error:
                # rapidocr re-raises anything from a model run as its own ONNXRuntimeError
                if isinstance(error, OcrTimeout) or isinstance(error.__cause__, OcrTimeout):
                    raise OcrTimeout(f"OCR stopped at its {timeout_seconds:g} s page time cap") from None
                raise
            finally:
                for guard in self._guards:
                    guard.deadline = float("inf")
        return arrange(_lines(image, result or []))


def _blanks(gray: np.ndarray, quad) -> list[tuple[float, float]]:
    """x ranges (page pixels) of a detected line with no ink in its middle band.

    Measured on the straightened line image at full resolution: the recogniser's own character
    positions are only as fine as its output columns (about a sixth of the line height), which is
    as wide as a word space, so spaces are judged from the pixels.
    """
    import cv2

    points = np.array(quad, dtype=np.float32)
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    if width < 4 or height < 6:
        return []
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    crop = cv2.warpPerspective(gray, cv2.getPerspectiveTransform(points, target), (width, height),
                               borderMode=cv2.BORDER_REPLICATE)
    _, ink = cv2.threshold(crop, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    top, bottom = int(height * BAND[0]), max(int(height * BAND[1]), int(height * BAND[0]) + 1)
    filled = ink[top:bottom].any(axis=0)
    scale = (points[1][0] - points[0][0]) / width
    blanks, start = [], None
    for x, ink_here in enumerate([*filled.tolist(), True]):
        if not ink_here and start is None:
            start = x
        elif ink_here and start is not None:
            blanks.append((float(points[0][0] + start * scale), float(points[0][0] + x * scale)))
            start = None
    return blanks


def _lines(image: np.ndarray, result: list) -> list[Line]:
    gray = image[:, :, 0] if image.ndim == 3 else image
    found = []
    for item in result:
        box, text, score = item[0], item[1], float(item[2])
        if score < MIN_LINE_SCORE or not text.strip():
            continue
        characters = item[3] if len(item) > 3 else None
        blanks = _blanks(gray, box) if characters else []
        height = max(point[1] for point in box) - min(point[1] for point in box)
        found.append((box, text, characters, blanks, word_gaps(text, characters, blanks), max(height, 1.0)))
    # a line the recogniser gave no space at all ("display.Amongotherthings") borrows the page's
    # word spacing, relative to its height
    shares = [median(gaps) / height for *_, gaps, height in found if len(gaps) >= 2]
    page_share = median(shares) if shares else 0.0
    lines = []
    for box, text, characters, blanks, gaps, height in found:
        word_gap = median(gaps) if len(gaps) >= 2 else page_share * height
        xs, ys = [point[0] for point in box], [point[1] for point in box]
        lines.append(Line(min(xs), min(ys), max(xs), max(ys), fix_spaces(text, characters, blanks, word_gap)))
    return lines
