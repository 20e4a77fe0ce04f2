"""Split the Python FAQ (reStructuredText sources shipped in Debian python3.11-doc) into one Markdown file per entry.

Build-time only: python bench/eval/build/faq_split.py /usr/share/doc/python3.11/html/_sources/faq bench/eval/corpora/faq
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PAGES = ("general", "programming", "library", "windows")
ROLE = re.compile(r":[a-z:]+:`(?:[^`<]*<)?~?([^`>]+)>?`")
LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`__?")
HEADING = re.compile(r"^(-{4,}|={4,})$")


def clean(line: str) -> str:
    line = ROLE.sub(r"`\1`", line)
    line = LINK.sub(r"\1", line)
    return line.replace("``", "`")


def entries(text: str) -> list[tuple[str, list[str]]]:
    lines = text.splitlines()
    found: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    skip = False
    for position, line in enumerate(lines):
        following = lines[position + 1] if position + 1 < len(lines) else ""
        if HEADING.match(line):
            continue
        if HEADING.match(following) and line.strip():
            if following.startswith("-"):
                current = (clean(line.strip()), [])
                found.append(current)
            else:
                current = None
            continue
        if line.startswith(".. "):
            skip = True
            continue
        if skip and (not line.strip() or line.startswith("   ")):
            if not line.strip():
                skip = False
            continue
        skip = False
        if current is not None:
            current[1].append(clean(line))
    return found


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60].rstrip("-")


def main(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    number = 0
    for page in PAGES:
        for title, body in entries((source / f"{page}.rst.txt").read_text()):
            text = "\n".join(body).strip()
            text = re.sub(r"\n{3,}", "\n\n", text)
            if len(text) < 80:
                continue
            number += 1
            path = target / f"{number:03d}-{slug(title)}.md"
            path.write_text(f"# {title}\n\n*Python {page} FAQ*\n\n{text}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
