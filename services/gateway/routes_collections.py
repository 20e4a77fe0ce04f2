"""Collections over REST: create, list, rename, delete, and share them with other accounts by email.

The ingest service owns collections and their members (by user id); the gateway owns accounts, so it
turns the email a member is added by into a user id, and shows members with their email and name.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, EmailStr, Field, StringConstraints

from docent.v1 import ingest_pb2
from services.gateway.accounts import CallerDep, StateDep
from services.gateway.errors import (
    INTERNAL,
    UNAUTHORIZED,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    ApiError,
    error_responses,
)

router = APIRouter(prefix="/api/collections", tags=["collections"])
Role = Literal["viewer", "editor", "owner"]
ROLE_NAMES: dict[int, Role] = {ingest_pb2.COLLECTION_ROLE_VIEWER: "viewer", ingest_pb2.COLLECTION_ROLE_EDITOR: "editor",
                               ingest_pb2.COLLECTION_ROLE_OWNER: "owner"}
ROLE_VALUES = {name: value for value, name in ROLE_NAMES.items()}
CollectionName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
IdPath = Annotated[str, Path(max_length=64)]
PageSize = Annotated[int, Query(ge=1, le=100, description="at most this many (one page)")]
PageToken = Annotated[str, Query(max_length=512, description="the `next_page_token` of the previous page")]

_COMMON = {401: UNAUTHORIZED, 500: INTERNAL, 503: UPSTREAM_UNAVAILABLE, 504: UPSTREAM_TIMEOUT}
_ONE = {**_COMMON, 404: "no such collection among the caller's (COLLECTION_NOT_FOUND)"}
_OWNER = {**_ONE, 403: "the caller's role is too low (COLLECTION_ROLE_REQUIRED) or the API key does not allow it",
          409: "the personal collection cannot be changed this way (PERSONAL_COLLECTION), or LAST_OWNER"}

_COLLECTION_EXAMPLE = {"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "name": "Support handbook", "personal": False,
                       "role": "owner", "created_at": "2026-12-01T09:00:00Z", "member_count": 3, "document_count": 42}


class CollectionOut(BaseModel):
    id: str
    name: str
    personal: bool = Field(description="the caller's own collection: cannot be shared, renamed or deleted")
    role: Role = Field(description="the caller's role")
    created_at: dt.datetime
    member_count: int
    document_count: int

    model_config = {"json_schema_extra": {"examples": [_COLLECTION_EXAMPLE]}}

    @classmethod
    def from_proto(cls, collection: ingest_pb2.Collection) -> CollectionOut:
        return cls(id=collection.id, name=collection.name, personal=collection.personal,
                   role=ROLE_NAMES[collection.role], created_at=collection.create_time.ToDatetime(dt.UTC),
                   member_count=collection.member_count, document_count=collection.document_count)


class CollectionList(BaseModel):
    collections: list[CollectionOut]
    next_page_token: str | None = Field(None, description="pass as `page_token` for the next page; null on the last")


class CollectionIn(BaseModel):
    name: CollectionName

    model_config = {"json_schema_extra": {"examples": [{"name": "Support handbook"}]}}


class MemberIn(BaseModel):
    email: EmailStr = Field(description="the account to share with")
    role: Role

    model_config = {"json_schema_extra": {"examples": [{"email": "grace@example.com", "role": "editor"}]}}


class MemberOut(BaseModel):
    user_id: str
    email: str | None = Field(description="null for a user id without an account (a service's minted token)")
    username: str | None
    role: Role
    added_at: dt.datetime

    model_config = {"json_schema_extra": {"examples": [
        {"user_id": "5d2e8f8a-1b7c-4a0e-8f5e-3c9d2a1b0c4d", "email": "grace@example.com", "username": "grace",
         "role": "editor", "added_at": "2026-12-01T09:05:00Z"}]}}


class MemberList(BaseModel):
    members: list[MemberOut]
    next_page_token: str | None = Field(None, description="pass as `page_token` for the next page; null on the last")


async def _members_out(state, members: list[ingest_pb2.CollectionMember]) -> list[MemberOut]:
    ids = [uuid.UUID(member.user_id) for member in members if _is_uuid(member.user_id)]
    accounts = {}
    if ids:
        rows = await state.db().fetch("SELECT id, email, username FROM users WHERE id = ANY($1::uuid[])", ids)
        accounts = {str(row["id"]): row for row in rows}
    return [MemberOut(user_id=member.user_id, email=accounts[member.user_id]["email"] if member.user_id in accounts
                      else None,
                      username=accounts[member.user_id]["username"] if member.user_id in accounts else None,
                      role=ROLE_NAMES[member.role], added_at=member.add_time.ToDatetime(dt.UTC))
            for member in members]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@router.get("/", response_model=CollectionList, operation_id="listCollections",
            responses=error_responses({**_COMMON, 400: "a page_token this list did not give (PAGE_TOKEN_INVALID)"},
                                      validation=True))
async def list_collections(caller: CallerDep, state: StateDep, limit: PageSize = 100,
                           page_token: PageToken = "") -> CollectionList:
    """The caller's collections (the personal one first, then by name), with the caller's role in each."""
    reply = await state.ingest.ListCollections(
        ingest_pb2.ListCollectionsRequest(view=ingest_pb2.COLLECTION_VIEW_FULL, page_size=limit,
                                          page_token=page_token), **state.options(caller))
    return CollectionList(collections=[CollectionOut.from_proto(item) for item in reply.collections],
                          next_page_token=reply.next_page_token or None)


@router.post("/", status_code=status.HTTP_201_CREATED, response_model=CollectionOut, operation_id="createCollection",
             responses=error_responses({**_COMMON, 403: "an API key limited to collections (API_KEY_SCOPE)"},
                                       validation=True))
async def create_collection(body: CollectionIn, caller: CallerDep, state: StateDep) -> CollectionOut:
    """A new collection; the caller is its owner and may share it."""
    reply = await state.ingest.CreateCollection(ingest_pb2.CreateCollectionRequest(name=body.name),
                                                **state.options(caller))
    return CollectionOut.from_proto(reply.collection)


@router.get("/{collection_id}", response_model=CollectionOut, operation_id="getCollection",
            responses=error_responses(_ONE, validation=True))
async def get_collection(collection_id: IdPath, caller: CallerDep, state: StateDep) -> CollectionOut:
    """One of the caller's collections."""
    reply = await state.ingest.GetCollection(ingest_pb2.GetCollectionRequest(collection_id=collection_id),
                                             **state.options(caller))
    return CollectionOut.from_proto(reply)


@router.patch("/{collection_id}", response_model=CollectionOut, operation_id="updateCollection",
              responses=error_responses(_OWNER, validation=True))
async def rename_collection(collection_id: IdPath, body: CollectionIn, caller: CallerDep,
                            state: StateDep) -> CollectionOut:
    """Rename a collection (owner)."""
    reply = await state.ingest.UpdateCollection(
        ingest_pb2.UpdateCollectionRequest(collection_id=collection_id, name=body.name), **state.options(caller))
    return CollectionOut.from_proto(reply.collection)


@router.delete("/{collection_id}", status_code=status.HTTP_204_NO_CONTENT, operation_id="deleteCollection",
               responses=error_responses({**_OWNER, 409: "it still holds documents (COLLECTION_NOT_EMPTY), or it "
                                                         "is the personal collection (PERSONAL_COLLECTION)"},
                                         validation=True))
async def delete_collection(collection_id: IdPath, caller: CallerDep, state: StateDep) -> Response:
    """Delete an empty collection (owner)."""
    await state.ingest.DeleteCollection(ingest_pb2.DeleteCollectionRequest(collection_id=collection_id),
                                        **state.options(caller))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{collection_id}/members", response_model=MemberList, operation_id="listCollectionMembers",
            responses=error_responses({**_ONE, 400: "a page_token this list did not give (PAGE_TOKEN_INVALID)"},
                                      validation=True))
async def list_members(collection_id: IdPath, caller: CallerDep, state: StateDep, limit: PageSize = 100,
                       page_token: PageToken = "") -> MemberList:
    """Who shares the collection, with their roles (any member may look), oldest first."""
    reply = await state.ingest.ListCollectionMembers(ingest_pb2.ListCollectionMembersRequest(
        collection_id=collection_id, page_size=limit, page_token=page_token), **state.options(caller))
    return MemberList(members=await _members_out(state, list(reply.members)),
                      next_page_token=reply.next_page_token or None)


@router.post("/{collection_id}/members", response_model=MemberOut, operation_id="setCollectionMember",
             responses=error_responses({**_OWNER, 404: "no such collection among the caller's (COLLECTION_NOT_FOUND), "
                                                       "or no account with that email (USER_NOT_FOUND)"},
                                       validation=True))
async def set_member(collection_id: IdPath, body: MemberIn, caller: CallerDep, state: StateDep) -> MemberOut:
    """Share the collection with an account, or change its role (owner)."""
    user_id = await state.db().fetchval("SELECT id FROM users WHERE lower(email) = lower($1)", str(body.email))
    if user_id is None:
        raise ApiError(404, "No account with this email", "USER_NOT_FOUND")
    reply = await state.ingest.SetCollectionMember(ingest_pb2.SetCollectionMemberRequest(
        collection_id=collection_id, user_id=str(user_id), role=ROLE_VALUES[body.role]), **state.options(caller))
    return (await _members_out(state, [reply.member]))[0]


@router.delete("/{collection_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT,
               operation_id="deleteCollectionMember",
               responses=error_responses({**_OWNER, 404: "no such collection among the caller's (COLLECTION_NOT_FOUND) "
                                                         "or no such member (MEMBER_NOT_FOUND)"}, validation=True))
async def remove_member(collection_id: IdPath, user_id: Annotated[str, Path(max_length=128)], caller: CallerDep,
                        state: StateDep) -> Response:
    """Remove a member (owner), or leave the collection (your own user id)."""
    await state.ingest.DeleteCollectionMember(
        ingest_pb2.DeleteCollectionMemberRequest(collection_id=collection_id, user_id=user_id), **state.options(caller))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
