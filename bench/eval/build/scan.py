"""Turn rendered page images into a 'scanned' image-only PDF (build-time only; needs Pillow and img2pdf).

    pdftoppm -f N -l N -r 150 -gray -png R-intro.pdf imgXX   (one per chosen page)
    python bench/eval/build/scan.py OUT.pdf img01*.png ... [--degrade K]   (the last K pages skewed + noise)
"""

from __future__ import annotations

import io
import random
import sys

import img2pdf
from PIL import Image, ImageFilter


def degrade(image: Image.Image, seed: int) -> Image.Image:
    """A slightly skewed, blurred, noisy page, as from a cheap flatbed scanner."""
    rng = random.Random(seed)
    image = image.rotate(rng.choice((-1, 1)) * 0.8, resample=Image.BICUBIC, expand=False, fillcolor=255)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    noise = Image.effect_noise(image.size, 18)
    return Image.blend(image, noise, 0.12)


def main(argv: list[str]) -> None:
    out, rest = argv[0], argv[1:]
    degraded = 0
    if "--degrade" in rest:
        position = rest.index("--degrade")
        degraded = int(rest[position + 1])
        rest = rest[:position] + rest[position + 2:]
    pages = []
    for number, path in enumerate(rest):
        image = Image.open(path).convert("L")
        if number >= len(rest) - degraded:
            image = degrade(image, number)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70, dpi=(150, 150))
        pages.append(buffer.getvalue())
    with open(out, "wb") as handle:
        handle.write(img2pdf.convert(pages))


if __name__ == "__main__":
    main(sys.argv[1:])
