"""Split chapter 1 of the Debian Reference (HTML of debian-reference-de/-fr/-es 2.100) into one Markdown file per
subsection, each subsection taken in one of the three languages.

Build-time only: python bench/eval/build/debref_split.py /usr/share/debian-reference bench/eval/corpora/multilingual
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

LANGS = ("de", "fr", "es")
TITLES = {"de": "Debian-Referenz", "fr": "Référence Debian", "es": "Referencia Debian"}
MIN_CHARS = 500
HEADING = re.compile(r'<h([2-4]) class="title"[^>]*><a id="([^"]+)"\s*/>(.*?)</h\1>', re.DOTALL)


def text_of(fragment: str) -> str:
    fragment = re.sub(r"<(script|style)[^>]*>.*?</\1>", "", fragment, flags=re.DOTALL)
    # one line per table row: drop the line and paragraph breaks inside it
    fragment = re.sub(r"<tr.*?</tr>", lambda row: re.sub(r"\s+|</?(p|div)[^>]*>", " ", row.group(0)) + "\n",
                      fragment, flags=re.DOTALL)
    fragment = re.sub(r"</(p|li|tr|pre|dt|dd|div|h\d)>|<br\s*/?>", "\n", fragment)
    fragment = re.sub(r"</t[dh]>", " | ", fragment)
    fragment = re.sub(r"<li[^>]*>", "- ", fragment)
    fragment = html.unescape(re.sub(r"<[^>]+>", "", fragment))
    lines = [re.sub(r"[ \t]+", " ", line).strip(" |") for line in fragment.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def sections(page: str) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    matches = list(HEADING.finditer(page))
    for position, match in enumerate(matches):
        end = matches[position + 1].start() if position + 1 < len(matches) else len(page)
        found[match.group(2)] = (text_of(match.group(3)), text_of(page[match.end():end]))
    return found


def main(source: Path, target: Path) -> None:
    """Every subsection of chapter 1 with at least MIN_CHARS of German text, each in one language only
    (de, fr, es in turn), so that no answer is in the corpus twice."""
    target.mkdir(parents=True, exist_ok=True)
    found = {lang: sections((source / f"ch01.{lang}.html").read_text()) for lang in LANGS}
    chosen = [name for name, (_, body) in found["de"].items() if len(body) >= MIN_CHARS]
    for number, section in enumerate(chosen, 1):
        lang = LANGS[(number - 1) % len(LANGS)]
        title, body = found[lang][section]
        name = f"{lang}-{number:02d}{section.replace('_literal', '').replace('_', '-')}.md"
        (target / name).write_text(f"# {title}\n\n*{TITLES[lang]}*\n\n{body}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
