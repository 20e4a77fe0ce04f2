"""Which collections a chat turn searches, and the token that carries them to the retrieval service.

The ingest service owns collections and their members: the chat service asks it (ListCollections, on
the caller's own token, so an API key's scope applies) at every turn, so a member removed a moment ago is
not searched. The answer goes to retrieval inside a short token minted for this call (`cols` claim),
which retrieval trusts as it trusts any token signed with the deployment's secret. Chat memory is not
affected: it is searched by user id, never shared.

When the ingest service cannot be reached and the caller named no collection, the turn searches the
caller's personal collection only (what a plain token gives retrieval) rather than failing: a shared
collection's documents are missing from that answer, and the log says so.
"""

from __future__ import annotations

import grpc
import structlog

from docent.v1 import ingest_pb2, ingest_pb2_grpc
from services.runtime.auth import mint_token
from services.runtime.call_context import remaining_seconds
from services.runtime.errors import from_rpc_error
from services.runtime.grpc_client import call_options
from services.runtime.pagination import MAX_PAGE_SIZE

log = structlog.get_logger("docent.chat")
# the minted token outlives the one Search call it is for by a wide margin
SEARCH_TOKEN_SECONDS = 120
# the collection lookup is a small indexed query: it never needs the whole user deadline
LOOKUP_TIMEOUT_SECONDS = 5.0


class CollectionScope:
    def __init__(self, ingest: ingest_pb2_grpc.IngestServiceStub, secret: str) -> None:
        self._ingest = ingest
        self._secret = secret

    async def search_token(self, user_id: str, token: str, requested: list[str]) -> str:
        """The token for the retrieval Search of one turn: it names every collection the caller may read
        (or those of `requested`, each of which must be readable: NOT_FOUND otherwise)."""
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
            return token
        return mint_token(self._secret, user_id, SEARCH_TOKEN_SECONDS, collections=found)
