"""Which collections a chat turn searches, and the token that carries them to the retrieval service.

The ingest service owns collections and their members: the chat service asks it (ListCollections, on
the caller's own token, so an API key's scope applies) which collections the caller may read. The answer
goes to retrieval inside a short token minted for this call (`cols` claim), which retrieval trusts as it
trusts any token signed with the deployment's secret. Chat memory is not affected: it is searched by user
id, never shared.

A resolution is reused by the caller's next turns while their membership epoch (services/runtime/membership.py)
stays what it was when the resolution began: the ingest service advances it after every change to the user's
memberships, so a member removed a moment ago is not searched, and a collection shared a moment ago is, from
the very next turn — as when every turn asked. The epoch is read *before* ListCollections: a change that
commits while the call is under way advances the epoch past the one the resolution is kept under, so the
next turn resolves again (read after, the epoch could already be the new one while the answer was the old
state). Without an epoch (Redis unreachable), every turn asks, as before. A resolution depends on the user,
their API key's collection scope and the collections the turn names, and is kept under all three; it is
kept for at most MAX_AGE_SECONDS whatever the epoch says, against a change whose epoch could not be advanced.

When the ingest service cannot be reached and the caller named no collection, the turn searches the
caller's personal collection only (what a plain token gives retrieval) rather than failing: a shared
collection's documents are missing from that answer, and the log says so. That answer is not kept.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc
import structlog

from docent.v1 import ingest_pb2, ingest_pb2_grpc
from services.runtime.auth import mint_token
from services.runtime.call_context import identity_var, remaining_seconds
from services.runtime.errors import from_rpc_error
from services.runtime.grpc_client import call_options
from services.runtime.membership import MembershipEpochs
from services.runtime.pagination import MAX_PAGE_SIZE

log = structlog.get_logger("docent.chat")
# the minted token outlives the one Search call it is for by a wide margin
SEARCH_TOKEN_SECONDS = 120
# the collection lookup is a small indexed query: it never needs the whole user deadline
LOOKUP_TIMEOUT_SECONDS = 5.0
# a kept resolution is redone after this long even if the user's epoch did not change (see the module docstring):
# the longest a change whose epoch could not be advanced goes unseen. A turn that comes later than this after
# the user's previous one resolves again, so a shorter age would miss for most people reading an answer.
MAX_AGE_SECONDS = 60.0
# resolutions kept, least recently used dropped first: a few hundred bytes each
MAX_RESOLUTIONS = 10_000


@dataclass(frozen=True)
class ResolutionKey:
    """What ListCollections' answer depends on: the user, the collections their API key is limited to (None:
    a session token or an unscoped key) and the collections the turn names (empty: all)."""

    user_id: str
    key_scope: frozenset[str] | None
    requested: tuple[str, ...]


@dataclass(frozen=True)
class Resolution:
    epoch: str
    collections: tuple[str, ...]
    resolved_at: float  # monotonic


class Resolutions:
    """The resolutions of this process, each valid under one epoch for at most `max_age` seconds."""

    def __init__(self, max_entries: int = MAX_RESOLUTIONS, max_age: float = MAX_AGE_SECONDS) -> None:
        self._entries: OrderedDict[ResolutionKey, Resolution] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age

    def get(self, key: ResolutionKey, epoch: str) -> tuple[str, ...] | None:
        entry = self._entries.get(key)
        if entry is None or entry.epoch != epoch or time.monotonic() - entry.resolved_at > self._max_age:
            return None
        self._entries.move_to_end(key)
        return entry.collections

    def put(self, key: ResolutionKey, entry: Resolution) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class CollectionScope:
    def __init__(self, ingest: ingest_pb2_grpc.IngestServiceStub, secret: str, membership: MembershipEpochs) -> None:
        self._ingest = ingest
        self._secret = secret
        self._membership = membership
        self._resolutions = Resolutions()

    async def search_token(self, user_id: str, token: str, requested: list[str]) -> str:
        """The token for the retrieval Search of one turn: it names every collection the caller may read
        (or those of `requested`, each of which must be readable: NOT_FOUND otherwise)."""
        key = _resolution_key(user_id, requested)
        # before ListCollections, never after (module docstring)
        epoch = await self._membership.current(user_id) if key is not None else None
        found = self._resolutions.get(key, epoch) if key is not None and epoch is not None else None
        if found is None:
            resolved_at = time.monotonic()
            listed = await self._list(token, requested)
            if listed is None:
                return token
            found = tuple(listed)
            if key is not None and epoch is not None:
                self._resolutions.put(key, Resolution(epoch, found, resolved_at))
        return mint_token(self._secret, user_id, SEARCH_TOKEN_SECONDS, collections=found)

    async def _list(self, token: str, requested: list[str]) -> list[str] | None:
        """The collections ListCollections names, or None when the ingest service cannot be reached and the
        caller named none (the personal collection is searched then)."""
        found: list[str] = []
        page_token = ""
        try:
            while True:  # one page for nearly everyone: a page holds MAX_PAGE_SIZE collections
                reply = await self._ingest.ListCollections(
                    ingest_pb2.ListCollectionsRequest(collection_ids=requested, page_size=MAX_PAGE_SIZE,
                                                      page_token=page_token),
                    **call_options(token, remaining_seconds(LOOKUP_TIMEOUT_SECONDS)))
                found.extend(collection.id for collection in reply.collections)
                page_token = reply.next_page_token
                if not page_token:
                    break
        except grpc.aio.AioRpcError as error:
            if requested or error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise from_rpc_error(error) from None
            log.warning("collections_unresolved", error=error.code().name, searching="personal collection")
            return None
        return found


def _resolution_key(user_id: str, requested: list[str]) -> ResolutionKey | None:
    """The key of this turn's resolution, from the identity the chat RPC authenticated (whose token is the one
    ListCollections is called with); None when there is no such identity for `user_id`: nothing is kept then."""
    identity = identity_var.get()
    if identity is None or identity.user_id != user_id:
        return None
    grant = identity.key
    scope = frozenset(grant.collections) if grant is not None and grant.collections is not None else None
    return ResolutionKey(user_id, scope, tuple(sorted(set(requested))))
