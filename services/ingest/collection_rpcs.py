"""The collection methods of IngestService (services/ingest/collections.py holds the rules)."""

from __future__ import annotations

import asyncpg
import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from docent.v1 import ingest_pb2
from services.ingest import collections
from services.ingest.collections import Caller
from services.runtime.call_context import current_identity
from services.runtime.errors import InvalidArgument
from services.runtime.ids import parse_uuid
from services.runtime.membership import MembershipEpochs
from services.runtime.pagination import sort_key_request

ROLE_TO_PB = {collections.VIEWER: ingest_pb2.COLLECTION_ROLE_VIEWER,
              collections.EDITOR: ingest_pb2.COLLECTION_ROLE_EDITOR,
              collections.OWNER: ingest_pb2.COLLECTION_ROLE_OWNER}
ROLE_FROM_PB = {value: key for key, value in ROLE_TO_PB.items()}


def _timestamp(value) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def collection_to_pb(row: asyncpg.Record) -> ingest_pb2.Collection:
    collection = ingest_pb2.Collection(id=str(row["id"]), name=row["name"], personal=row["personal"],
                                       role=ROLE_TO_PB[row["role"]])
    if "document_count" in row:  # the FULL view
        collection.create_time.CopyFrom(_timestamp(row["created_at"]))
        collection.member_count, collection.document_count = row["member_count"], row["document_count"]
    return collection


def member_to_pb(row: asyncpg.Record) -> ingest_pb2.CollectionMember:
    return ingest_pb2.CollectionMember(user_id=row["user_id"], role=ROLE_TO_PB[row["role"]],
                                       add_time=_timestamp(row["added_at"]))


def _caller() -> Caller:
    return Caller.of(current_identity())


class CollectionMethods:
    """Mixed into IngestServicer, whose `pool` and `membership` (the users' membership epochs) it uses."""

    pool: asyncpg.Pool
    membership: MembershipEpochs

    async def CreateCollection(self, request: ingest_pb2.CreateCollectionRequest,
                               context: grpc.aio.ServicerContext) -> ingest_pb2.CreateCollectionResponse:
        created = await collections.create(self.pool, self.membership, _caller(), request.name)
        return ingest_pb2.CreateCollectionResponse(collection=collection_to_pb(created))

    async def GetCollection(self, request: ingest_pb2.GetCollectionRequest,
                            context: grpc.aio.ServicerContext) -> ingest_pb2.Collection:
        return collection_to_pb(await collections.get(self.pool, _caller(), request.collection_id))

    async def ListCollections(self, request: ingest_pb2.ListCollectionsRequest,
                              context: grpc.aio.ServicerContext) -> ingest_pb2.ListCollectionsResponse:
        caller = _caller()
        full = request.view == ingest_pb2.COLLECTION_VIEW_FULL
        if request.collection_ids:  # these, each readable, in one page
            wanted = [parse_uuid(value) for value in request.collection_ids]
            rows, _ = await collections.listing(self.pool, caller, full=full,
                                                only=[ident for ident in wanted if ident is not None])
            found = {row["id"] for row in rows}
            for value, ident in zip(request.collection_ids, wanted, strict=True):
                if ident is None or ident not in found:
                    raise collections.collection_not_found(value)
            return ingest_pb2.ListCollectionsResponse(collections=[collection_to_pb(row) for row in rows])
        page_size, after = sort_key_request(request.page_size, request.page_token, 3)
        rows, following = await collections.listing(self.pool, caller, full=full, page_size=page_size, after=after)
        return ingest_pb2.ListCollectionsResponse(collections=[collection_to_pb(row) for row in rows],
                                                  next_page_token=following.encode() if following else "")

    async def UpdateCollection(self, request: ingest_pb2.UpdateCollectionRequest,
                               context: grpc.aio.ServicerContext) -> ingest_pb2.UpdateCollectionResponse:
        renamed = await collections.rename(self.pool, _caller(), request.collection_id, request.name)
        return ingest_pb2.UpdateCollectionResponse(collection=collection_to_pb(renamed))

    async def DeleteCollection(self, request: ingest_pb2.DeleteCollectionRequest,
                               context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await collections.delete_empty(self.pool, self.membership, _caller(), request.collection_id)
        return empty_pb2.Empty()

    async def ListCollectionMembers(self, request: ingest_pb2.ListCollectionMembersRequest,
                                    context: grpc.aio.ServicerContext) -> ingest_pb2.ListCollectionMembersResponse:
        page_size, after = sort_key_request(request.page_size, request.page_token, 2)
        rows, following = await collections.members(self.pool, _caller(), request.collection_id, page_size, after)
        return ingest_pb2.ListCollectionMembersResponse(members=[member_to_pb(row) for row in rows],
                                                        next_page_token=following.encode() if following else "")

    async def SetCollectionMember(self, request: ingest_pb2.SetCollectionMemberRequest,
                                  context: grpc.aio.ServicerContext) -> ingest_pb2.SetCollectionMemberResponse:
        role = ROLE_FROM_PB.get(request.role)
        if role is None:
            raise InvalidArgument("role must be VIEWER, EDITOR or OWNER", reason="ROLE_INVALID")
        member = await collections.set_member(self.pool, self.membership, _caller(), request.collection_id,
                                              request.user_id, role)
        return ingest_pb2.SetCollectionMemberResponse(member=member_to_pb(member))

    async def DeleteCollectionMember(self, request: ingest_pb2.DeleteCollectionMemberRequest,
                                     context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await collections.remove_member(self.pool, self.membership, _caller(), request.collection_id,
                                        request.user_id)
        return empty_pb2.Empty()
