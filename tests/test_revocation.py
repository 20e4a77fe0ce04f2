"""A logged-out token stops working over gRPC too, not only through the gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
import pytest

from docent.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest.app import IngestApp
from services.runtime.auth import RevocationList, mint_token
from services.runtime.errors import error_info
from tests.conftest import TEST_SECRET, create_database, make_settings, running_service


async def test_revoked_token_is_refused_by_a_grpc_service(backing) -> None:
    settings = make_settings(backing, database_url=await create_database(backing.database_url))
    app = IngestApp(settings)
    async with running_service(app, settings) as target, grpc.aio.insecure_channel(target) as channel:
        app.revocations = RevocationList(app.pool, ttl_seconds=0.1)
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        token_id = uuid.uuid4().hex
        token = mint_token(TEST_SECRET, "alice", 3600, token_id=token_id)
        metadata = (("authorization", f"Bearer {token}"),)
        await stub.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=metadata, timeout=10)

        await app.pool.execute("INSERT INTO revoked_tokens (token_id, expires_at) VALUES ($1, $2)", token_id,
                               dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        await asyncio.sleep(0.15)  # the cached "not revoked" answer expires
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).reason == "TOKEN_REVOKED"

        # another token of the same user still works
        other = mint_token(TEST_SECRET, "alice", 3600)
        await stub.ListDocuments(ingest_pb2.ListDocumentsRequest(),
                                 metadata=(("authorization", f"Bearer {other}"),), timeout=10)
