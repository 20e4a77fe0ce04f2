"""OCR in `make bench`: pages per second and character error rate on the scanned eval PDFs.

The scans of bench/eval/scanned.json (8 pages of "An Introduction to R" rendered as images, two
of them skewed and noisy, and a public-domain book page) go through the ingest parser with OCR on,
in-process as the worker runs it; each page is compared with its ground-truth text.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata

from bench.corpus import REPO
from services.ingest.filetypes import PDF
from services.ingest.ocr import OcrOptions
from services.ingest.parse import iter_pages
from services.runtime.config import Settings

SET = REPO / "bench" / "eval" / "scanned.json"
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"'})


def plain(text: str) -> str:
    """Text as a reader compares it: straight quotes, single spaces, no space before punctuation
    (the 1884 typesetting puts one before ; ? and ! which is layout, not text)."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    return re.sub(r" (?=[,;:.!?])", "", " ".join(text.split()))


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate: edits to turn the OCR text into the reference, per reference character."""
    hypothesis, reference = plain(hypothesis), plain(reference)
    return edit_distance(hypothesis, reference) / len(reference)


def run() -> dict:
    options = OcrOptions.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    pages: list[dict] = []
    seconds = 0.0
    for document in json.loads(SET.read_text())["documents"]:
        data = (REPO / document["path"]).read_bytes()
        started = time.perf_counter()
        parsed = list(iter_pages(data, PDF, options))
        seconds += time.perf_counter() - started
        for page in parsed:
            truth = document["ground_truth"].get(str(page.number))
            if truth:
                pages.append({"document": document["id"], "page": page.number,
                              "cer": round(cer(page.text, (REPO / truth).read_text()), 4)})
    rates = sorted(page["cer"] for page in pages)
    return {"pages": len(pages), "seconds": round(seconds, 2), "pages_per_s": round(len(pages) / seconds, 3),
            "cer_median": rates[len(rates) // 2], "cer_max": rates[-1], "per_page": pages}
