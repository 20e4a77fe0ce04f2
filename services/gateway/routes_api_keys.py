"""API keys over REST: create (shown once), list, revoke. Managing keys takes a session token."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field, StringConstraints

from services.gateway.accounts import CallerDep, StateDep
from services.gateway.api_key_store import MAX_ACTIVE_KEYS
from services.gateway.errors import INTERNAL, UNAUTHORIZED, ApiError, error_responses
from services.gateway.state import Caller
from services.runtime.api_keys import display_prefix

router = APIRouter(prefix="/api/keys", tags=["api keys"])
KeyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Access = Literal["read", "write"]

_KEY_EXAMPLE = {"id": "0b6f2c1e-8f3a-4d55-9c1b-2a7e5d4c3b21", "name": "nightly-sync", "prefix": "dk_0b6f2c1e",
                "access": "read", "created_at": "2026-12-01T09:00:00Z", "expires_at": "2027-03-01T09:00:00Z",
                "last_used_at": "2026-12-02T08:15:00Z", "chats_per_minute": 30, "uploads_per_minute": 10,
                "collection_ids": ["7c9e6679-7425-40de-944b-e07fc1f90ae7"]}


class CreateApiKeyRequest(BaseModel):
    name: KeyName = Field(description="what the key is for, shown in lists")
    access: Access = Field("read", description="`read`: list, search and chat; `write`: also upload, replace, "
                                               "delete")
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="no expiry when absent")
    chats_per_minute: int | None = Field(None, ge=1, le=100_000,
                                         description="this key's own chat limit, on top of its user's")
    uploads_per_minute: int | None = Field(None, ge=1, le=100_000,
                                           description="this key's own upload limit, on top of its user's")
    collection_ids: list[uuid.UUID] | None = Field(
        None, max_length=100, description="the collections the key reaches (among those its user belongs to); "
                                          "absent: all of them")

    model_config = {"json_schema_extra": {"examples": [
        {"name": "nightly-sync", "access": "read", "expires_in_days": 90, "chats_per_minute": 30,
         "collection_ids": ["7c9e6679-7425-40de-944b-e07fc1f90ae7"]}]}}


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="the start of the key, to tell keys apart")
    access: Access
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    chats_per_minute: int | None
    uploads_per_minute: int | None
    collection_ids: list[str] | None = Field(description="the collections the key reaches; null: all its user's")

    model_config = {"json_schema_extra": {"examples": [_KEY_EXAMPLE]}}


class CreatedApiKeyOut(ApiKeyOut):
    key: str = Field(description="the key: shown this once, send it as `Authorization: Bearer <key>`")

    model_config = {"json_schema_extra": {"examples": [
        {**_KEY_EXAMPLE, "key": "dk_0b6f2c1e8f3a4d559c1b2a7e5d4c3b21_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"}]}}


class ApiKeyList(BaseModel):
    keys: list[ApiKeyOut]


def _key_out(row: asyncpg.Record, last_used: dt.datetime | None) -> dict[str, object]:
    return {"id": str(row["id"]), "name": row["name"], "prefix": display_prefix(row["id"]), "access": row["access"],
            "created_at": row["created_at"], "expires_at": row["expires_at"], "last_used_at": last_used,
            "chats_per_minute": row["chats_per_minute"], "uploads_per_minute": row["uploads_per_minute"],
            "collection_ids": [str(value) for value in row["collection_ids"]] if row["collection_ids"] is not None
            else None}


_SESSION = "403: a session token is needed to manage keys, not an API key (SESSION_REQUIRED)"
_ERRORS = {401: UNAUTHORIZED, 403: _SESSION, 500: INTERNAL, 503: "accounts database unavailable"}


def _require_session(caller: Caller) -> None:
    if caller.key is not None:
        raise ApiError(403, "API keys cannot manage API keys: sign in", "SESSION_REQUIRED")


@router.post("/", status_code=status.HTTP_201_CREATED, response_model=CreatedApiKeyOut, operation_id="createApiKey",
             responses=error_responses({**_ERRORS, 409: f"{MAX_ACTIVE_KEYS} active keys already (API_KEY_LIMIT)"},
                                       validation=True))
async def create_key(body: CreateApiKeyRequest, caller: CallerDep, state: StateDep) -> CreatedApiKeyOut:
    """Create a key for a service or script; the response is the only time the key is shown."""
    _require_session(caller)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=body.expires_in_days)) if body.expires_in_days else None
    row, key = await state.api_keys.create(caller.user_id, body.name, body.access, expires,
                                           body.chats_per_minute, body.uploads_per_minute,
                                           list(dict.fromkeys(body.collection_ids)) if body.collection_ids is not None
                                           else None)
    return CreatedApiKeyOut(**_key_out(row, None), key=key)


@router.get("/", response_model=ApiKeyList, operation_id="listApiKeys", responses=error_responses(_ERRORS))
async def list_keys(caller: CallerDep, state: StateDep) -> ApiKeyList:
    """The caller's keys that are not revoked (expired ones included, with their expiry), newest first."""
    _require_session(caller)
    keys = await state.api_keys.list(caller.user_id)
    return ApiKeyList(keys=[ApiKeyOut(**_key_out(row, last)) for row, last in keys])


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, operation_id="revokeApiKey",
               responses=error_responses({**_ERRORS, 404: "no such key for this user (API_KEY_NOT_FOUND)"},
                                         validation=True))
async def revoke_key(key_id: Annotated[str, Path(max_length=64)], caller: CallerDep, state: StateDep) -> None:
    """Revoke a key: refused at once by the gateway, and by the gRPC services within seconds."""
    _require_session(caller)
    try:
        ident = uuid.UUID(key_id)
    except ValueError:
        ident = None
    if ident is None or not await state.api_keys.revoke(caller.user_id, ident):
        raise ApiError(404, "API key not found", "API_KEY_NOT_FOUND")
