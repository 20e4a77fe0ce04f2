"""AIP-158 pagination over keyset cursors, and protobuf timestamps, shared by the list RPCs."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from services.runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class PageCursor:
    """Where the next page starts in an (at DESC, id DESC) ordering; opaque to clients."""

    at: dt.datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = json.dumps([self.at.isoformat(), str(self.id)]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> PageCursor | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            at, ident = json.loads(raw)
            return cls(dt.datetime.fromisoformat(at), uuid.UUID(ident))
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True)
class SortKey:
    """Where the next page starts in an ascending ordering on several columns (e.g. name, then id); opaque
    to clients. Values are JSON scalars."""

    values: tuple[object, ...]

    def encode(self) -> str:
        raw = json.dumps(list(self.values)).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, arity: int) -> SortKey | None:
        try:
            values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except ValueError:
            return None
        if not isinstance(values, list) or len(values) != arity \
                or not all(isinstance(value, str | int | bool) for value in values):
            return None
        return cls(tuple(values))


def sort_key_request(page_size: int, page_token: str, arity: int) -> tuple[int, SortKey | None]:
    """Validated (page size, cursor) of a List request ordered on `arity` columns."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
    cursor = None
    if page_token:
        cursor = SortKey.decode(page_token, arity)
        if cursor is None:
            raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), cursor


def page_request(page_size: int, page_token: str) -> tuple[int, PageCursor | None]:
    """Validated (page size, cursor) of a List request; INVALID_ARGUMENT with a reason otherwise."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
    cursor = None
    if page_token:
        cursor = PageCursor.decode(page_token)
        if cursor is None:
            raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), cursor


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp
