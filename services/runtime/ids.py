"""Ids as callers send them: a malformed one is simply not found, never an error of its own."""

from __future__ import annotations

import uuid


def parse_uuid(value: str) -> uuid.UUID | None:
    """The UUID `value` names, or None when it names none."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None
