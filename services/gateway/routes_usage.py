"""GET /api/usage: what the caller keeps against the quotas, and the per-minute limits that apply to it.

Stored documents and bytes come from the ingest service (it owns the documents and enforces those
quotas); the per-minute limits are the deployment's settings, lowered by the API key's own limits when
the caller uses a key.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from docent.v1 import ingest_pb2
from services.gateway.accounts import CallerDep, StateDep
from services.gateway.errors import INTERNAL, UNAUTHORIZED, UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE, error_responses

router = APIRouter(prefix="/api", tags=["account"])


class UsageOut(BaseModel):
    documents: int = Field(description="documents kept, in every state")
    stored_bytes: int = Field(description="total size of their files")
    documents_limit: int | None = Field(description="documents that may be kept; null: no limit")
    stored_bytes_limit: int | None = Field(description="bytes of files that may be kept; null: no limit")
    chats_per_minute: int | None = Field(description="chat requests allowed per minute; null: no limit")
    uploads_per_minute: int | None = Field(description="uploads allowed per minute; null: no limit")

    model_config = {"json_schema_extra": {"examples": [
        {"documents": 12, "stored_bytes": 4_812_900, "documents_limit": 1000, "stored_bytes_limit": 1_073_741_824,
         "chats_per_minute": 60, "uploads_per_minute": 30}]}}


def _lowest(*limits: int | None) -> int | None:
    set_limits = [limit for limit in limits if limit]
    return min(set_limits) if set_limits else None


@router.get("/usage", response_model=UsageOut, operation_id="getUsage",
            responses=error_responses({401: UNAUTHORIZED, 500: INTERNAL, 503: UPSTREAM_UNAVAILABLE,
                                       504: UPSTREAM_TIMEOUT}))
async def get_usage(caller: CallerDep, state: StateDep) -> UsageOut:
    """The caller's stored documents and bytes, and the limits on them and on chats and uploads per minute."""
    usage = await state.ingest.GetUsage(ingest_pb2.GetUsageRequest(), **state.options(caller))
    key = caller.key
    return UsageOut(documents=usage.documents, stored_bytes=usage.stored_bytes,
                    documents_limit=usage.documents_limit or None, stored_bytes_limit=usage.stored_bytes_limit or None,
                    chats_per_minute=_lowest(state.settings.quota_chats_per_minute, key and key.chats_per_minute),
                    uploads_per_minute=_lowest(usage.uploads_per_minute_limit, key and key.uploads_per_minute))
