"""OCR of scanned PDF pages with the real RapidOCR models, through the real PDF parser."""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from pydantic import ValidationError

from bench.ocr import cer, plain
from services.ingest.filetypes import PDF
from services.ingest.ocr import OcrEngine, OcrOptions, OcrUnavailable
from services.ingest.ocr_layout import Line, arrange, fix_spaces, word_gaps
from services.ingest.parse import NO_TEXT, ParseError, count_pages, iter_pages
from services.runtime.config import Settings

DATA = Path(__file__).resolve().parent / "data"
SCAN = DATA / "scan_gutenberg-huckfinn-p29_1p.pdf"
# measured 0.003 with the default settings (150 dpi, the scan's own resolution); the cap leaves
# room for onnxruntime builds that round differently
MAX_CER = 0.02
# pyproject.toml installs rapidocr-onnxruntime only below Python 3.13 (no release supports 3.13)
needs_rapidocr = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                                    reason="rapidocr-onnxruntime is not installed (no release for Python >= 3.13)")
def combined_pdf(parts: list[tuple[Path, int]]) -> bytes:
    """A new PDF made of real pages of the test files (file, 0-based page), in that order."""
    out = pdfium.PdfDocument.new()
    for path, index in parts:
        source = pdfium.PdfDocument(path.read_bytes())
        out.import_pages(source, [index])
        source.close()
    buffer = io.BytesIO()
    out.save(buffer)
    out.close()
    return buffer.getvalue()


@needs_rapidocr
@pytest.mark.timeout(120)
def test_scanned_page_is_ocrd_with_a_low_character_error_rate():
    data = SCAN.read_bytes()
    reference = (DATA / "scan_gutenberg-huckfinn-p29_1p.txt").read_text(encoding="utf-8")
    started = time.perf_counter()
    pages = list(iter_pages(data, PDF))
    seconds = time.perf_counter() - started
    assert [page.number for page in pages] == [1] and count_pages(data, PDF) == 1
    text = pages[0].text
    rate = cer(text, reference)
    print(f"\nOCR: CER {rate:.4f} over {len(plain(reference))} characters, {seconds:.2f} s for the page "
          f"({1 / seconds:.2f} pages/s, model load included)")
    assert rate < MAX_CER, text
    # reading order and paragraphs: the title, two paragraphs, then the illustration's caption
    paragraphs = text.split("\n\n")
    assert paragraphs[1].startswith("WELL, I got a good going-over") and paragraphs[1].endswith("out no way.")
    assert paragraphs[2].startswith("I set down, one time") and "LECTURE" in paragraphs[-1]
    assert "would behave a while" in text  # "be-" + "have" across a line break


@needs_rapidocr
@pytest.mark.timeout(120)
def test_mixed_pdf_uses_the_text_layer_and_ocr_with_real_page_numbers():
    rdata = DATA / "R-data_41p.pdf"
    data = combined_pdf([(rdata, 19), (SCAN, 0), (rdata, 20), (SCAN, 0)])
    pages = list(iter_pages(data, PDF, OcrOptions(max_pages=1)))
    # the second scan is over the one-page OCR limit: skipped, and the numbering is unchanged
    assert [page.number for page in pages] == [1, 2, 3]
    assert "Files from versions 5 up to 12 of Stata" in pages[0].text
    assert "She told me to pray every day" in pages[1].text
    assert "Miss Watson" not in pages[0].text + pages[2].text


def test_ocr_off_fails_a_scan_with_a_reason():
    with pytest.raises(ParseError) as error:
        list(iter_pages(SCAN.read_bytes(), PDF, OcrOptions(enabled=False)))
    assert error.value.reason == NO_TEXT and "OCR is turned off" in error.value.message


def test_without_rapidocr_ocr_is_unavailable_and_a_scan_fails_with_a_reason(monkeypatch):
    """What Python 3.13 gets (no rapidocr release installs there): a clear OcrUnavailable, text pages still
    read, and a scan-only PDF fails NO_TEXT saying OCR is not installed."""
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # `import` now raises ModuleNotFoundError
    monkeypatch.setattr(OcrEngine, "_instances", {})
    with pytest.raises(OcrUnavailable, match="rapidocr-onnxruntime is not installed"):
        OcrEngine()
    with pytest.raises(ParseError) as error:
        list(iter_pages(SCAN.read_bytes(), PDF, OcrOptions()))
    assert error.value.reason == NO_TEXT and "OCR is turned off or not installed" in error.value.message
    rdata = DATA / "R-data_41p.pdf"
    pages = list(iter_pages(combined_pdf([(rdata, 19), (SCAN, 0)]), PDF, OcrOptions()))
    assert [page.number for page in pages] == [1] and "versions 5 up to 12 of Stata" in pages[0].text


@needs_rapidocr
def test_page_time_cap_stops_ocr():
    with pytest.raises(ParseError) as error:
        list(iter_pages(SCAN.read_bytes(), PDF, OcrOptions(page_timeout_seconds=1e-9)))
    assert error.value.reason == NO_TEXT and "OCR found no text" in error.value.message


def test_ocr_settings_are_validated():
    assert Settings(ocr_max_pages=3).ocr_max_pages == 3
    for bad in ({"ocr_dpi": 50}, {"ocr_max_pages": 0}, {"ocr_page_timeout_seconds": 0}):
        with pytest.raises(ValidationError):
            Settings(**bad)
    options = OcrOptions.from_settings(Settings(ocr_enabled=False, embedding_threads=1))
    assert not options.enabled and options.threads == 1


# -- layout: spaces, rows, blocks, paragraphs (pure geometry) -----------------------------------

def boxes(text: str, width: float = 10.0) -> list:
    """Character boxes as RapidOCR returns them (4 corners), one every `width` pixels."""
    return [[[n * width, 0], [(n + 1) * width, 0], [(n + 1) * width, 24], [n * width, 24]] for n in range(len(text))]


def test_missing_spaces_are_restored_from_blank_pixels_and_punctuation():
    text = "so thatIthought"  # characters 10 px apart; blanks measured in the line image
    blanks = [(19.0, 27.0), (66.0, 73.0), (77.0, 84.0), (89.0, 91.0)]  # 8, 7, 7 px: spaces; 2 px: letters
    gaps = word_gaps(text, boxes(text), blanks)
    assert gaps == [8.0]
    assert fix_spaces(text, boxes(text), blanks, 8.0) == "so that I thought"
    assert fix_spaces(text, boxes(text), blanks, 0.0) == text  # no word spacing known: left alone
    assert fix_spaces("WELL,", boxes("WELL,"), [(8.0, 17.0)], 8.0) == "WELL,"  # a drop capital
    assert fix_spaces("said,but it.She saw e.g. U.S. 3.5 x.com", None, [], 0.0) == \
        "said, but it. She saw e.g. U.S. 3.5 x.com"
    assert fix_spaces("ChapterⅢ；", None, [], 0.0) == "ChapterIII;"


def test_columns_captions_and_paragraphs_are_read_in_order():
    lines = [
        Line(0, 0, 200, 20, "Left column starts here and"),
        Line(0, 24, 200, 44, "goes on to its end."),
        Line(20, 48, 200, 68, "An indented new paragraph"),
        Line(0, 72, 200, 92, "closes the left column."),
        Line(300, 2, 500, 22, "Right column"),
        Line(300, 26, 500, 46, "second line."),
        Line(60, 130, 140, 142, "FIGURE 1."),
        Line(0, 200, 60, 220, "Split"), Line(80, 201, 140, 221, "row"),
    ]
    assert arrange(lines).split("\n\n") == [
        "Left column starts here and goes on to its end.",
        "An indented new paragraph closes the left column.",
        "Right column second line.",
        "FIGURE 1.",
        "Split row",
    ]
