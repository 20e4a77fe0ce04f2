"""A registry of interchangeable implementations chosen by one setting (vector stores, answerers).

Each entry is a name, a builder from the settings, and an `auto` test. The setting names an entry,
or is `auto`: then the first entry whose test passes is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.runtime.config import Settings

Built = TypeVar("Built")


@dataclass(frozen=True)
class Kind(Generic[Built]):
    name: str
    build: Callable[[Settings], Built]
    # chosen by the setting's `auto` when this is true (the first match wins)
    auto: Callable[[Settings], bool]


def build_chosen(kinds: Sequence[Kind[Built]], wanted: str, settings: Settings, env_name: str) -> Built:
    for kind in kinds:
        if kind.name == wanted or (wanted == "auto" and kind.auto(settings)):
            return kind.build(settings)
    names = ", ".join(["auto", *(kind.name for kind in kinds)])
    raise SystemExit(f"docent: invalid setting {env_name}={wanted!r}: expected one of {names}")
