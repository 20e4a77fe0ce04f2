"""Small text helpers shared by the follow-up rewrite and the extractive answerer.

Deterministic and dependency-free: key terms (lower-cased words minus stop words, with a light
plural/possessive folding so "revenues" matches "revenue"), sentence splitting that survives
figures such as "$4.2M" and "e.g.", and removal of old citation markers.
"""

from __future__ import annotations

import functools
import re

# Function words, question words and the vocabulary of asking ("tell me", "what did we say about").
STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can could couldn't did didn't do does doesn't doing don't down during each either else
few for from further get got had has have having he her here hers herself him himself his how i if in into is
isn't it it's its itself just let me more most much my myself neither no nor not now of off on once only or
other our ours ourselves out over own please same she should so some such than that that's the their theirs
them themselves then there these they this those through to too under until up us very was wasn't we were
what what's when where which while who whom whose why will with would you your yours yourself yourselves
tell told say said says saying talk talked discuss discussed mention mentioned know explain show give find
compare compared comparison versus vs vs. one ones thing things anything something way like
""".split())

# Openers that mark a message as continuing the previous question ("and the profit?").
FOLLOW_UP_OPENERS = (
    "and", "or", "but", "also", "what about", "how about", "same for", "same with", "then", "so", "compared",
    "versus", "vs", "plus", "except",
)
# Words that refer back to something said before ("how does that compare to Q2?").
REFERRING_WORDS = frozenset({"it", "its", "it's", "that", "this", "those", "these", "they", "them", "their",
                             "there", "he", "she", "his", "her", "one", "ones", "same", "former", "latter",
                             "previous", "above", "compare", "compared", "comparison", "difference", "versus"})

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9$%.,'\-]*[A-Za-z0-9%]|[A-Za-z0-9]")
_MARKER = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
# a sentence ends at . ! ? (plus closing quotes/brackets) followed by space and an upper-case
# letter, digit, quote or bracket; "$4.2M" and "e.g. the" do not end a sentence
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9$€£])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "no.", "fig.", "approx.", "inc.")
_SPACE = re.compile(r"\s+")


def words(text: str) -> list[str]:
    """The words of `text` in order, lower-cased, trailing punctuation removed."""
    return [word.rstrip(".,'") for word in _WORD.findall(text.lower())]


@functools.lru_cache(maxsize=1 << 16)
def fold(word: str) -> str:
    """Light normalisation so that simple plurals and possessives match their singular."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) and not word[-2].isdigit():
        return word[:-1]
    return word


def key_terms(text: str) -> list[str]:
    """Content words of `text`, folded, in order of first appearance, without duplicates."""
    seen: dict[str, None] = {}
    for word in words(text):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        seen.setdefault(fold(word), None)
    return list(seen)


def display_terms(text: str) -> list[str]:
    """Like key_terms, but keeping each term as first written (for a readable standalone query)."""
    seen: dict[str, str] = {}
    for match in _WORD.finditer(text):
        raw = match.group(0).rstrip(".,'")
        word = raw.lower()
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        seen.setdefault(fold(word), raw)
    return list(seen.values())


def normalise_space(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def strip_markers(text: str) -> str:
    """Remove citation markers like [1] or [2, 3] (they refer to another answer's numbering)."""
    return normalise_space(_MARKER.sub("", text))


def sentences(text: str) -> list[str]:
    """Split prose into sentences; whitespace (including PDF line breaks) is normalised first."""
    flat = normalise_space(text)
    if not flat:
        return []
    pieces = _SENTENCE_END.split(flat)
    merged: list[str] = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if merged and merged[-1].lower().endswith(_ABBREVIATIONS):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    return f"{cut}…"
