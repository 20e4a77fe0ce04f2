"""The text a chunk is embedded as: the chunk, led by the title of its document.

A chunk alone often does not say what it is about ("| q | long long | integer | 8 |" from a table
of struct format characters, or "Use the -j flag" from an installation manual): the document's
title supplies that, so a question naming the subject finds the chunk. Only the vector sees the
title; the stored and shown text stays the chunk's own. (DOCENT_CONTEXTUAL_CHUNKS; changing it
needs `docent reindex`, as vectors of the two kinds do not compare well.)
"""

from __future__ import annotations

import re
from pathlib import PurePath

_SEPARATORS = re.compile(r"[-_.]+")
_LEADING_NUMBER = re.compile(r"^\d+\s+")


def document_title(filename: str) -> str:
    """A readable title from a file name: "002-struct_format-characters.csv" → "struct format characters"."""
    stem = PurePath(filename).stem
    return _LEADING_NUMBER.sub("", _SEPARATORS.sub(" ", stem)).strip() or stem


def embedding_text(title: str, chunk_text: str) -> str:
    return f"{title}\n{chunk_text}" if title else chunk_text
