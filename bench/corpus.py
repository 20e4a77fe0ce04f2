"""Benchmark inputs built from the repository's real test documents (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pypdfium2 as pdfium

REPO = Path(__file__).resolve().parent.parent
R_DATA = REPO / "tests" / "data" / "R-data_41p.pdf"


def long_pdf(path: Path, copies: int = 5) -> Path:
    """A 205-page real PDF: the 41-page R manual, five times (page text is real; it repeats)."""
    source = pdfium.PdfDocument(str(R_DATA))
    merged = pdfium.PdfDocument.new()
    try:
        for _ in range(copies):
            merged.import_pages(source)
        merged.save(str(path))
    finally:
        merged.close()
        source.close()
    return path


def manual_paragraphs() -> list[str]:
    from services.ingest.parse import iter_pages

    paragraphs: list[str] = []
    for page in iter_pages(R_DATA.read_bytes(), "application/pdf"):
        paragraphs.extend(part for part in page.text.split("\n\n") if len(part) > 80)
    return paragraphs


def small_files(count: int) -> list[tuple[str, bytes]]:
    """`count` distinct small Markdown notes (3-6 paragraphs of the manual each)."""
    paragraphs = manual_paragraphs()
    files = []
    for number in range(count):
        start = (number * 7) % len(paragraphs)
        picked = [paragraphs[(start + offset) % len(paragraphs)] for offset in range(3 + number % 4)]
        body = [f"# Note {number}", *picked]
        files.append((f"note-{number:04d}.md", "\n\n".join(body).encode()))
    return files


def noisy_vectors(base: np.ndarray, count: int, seed: int = 7, noise: float = 0.15) -> np.ndarray:
    """`count` unit vectors near real embeddings: real neighbourhoods, no hour of embedding."""
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), count)]
    vectors = picks + rng.normal(0, noise / np.sqrt(base.shape[1]), picks.shape).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def random_unit_vectors(count: int, dimension: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
