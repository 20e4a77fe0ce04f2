"""The shared gRPC bootstrap: auth, error mapping, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from docent.v1 import ingest_pb2, ingest_pb2_grpc
from services.runtime.auth import mint_token
from services.runtime.call_context import current_user_id
from services.runtime.errors import NotFound, error_info
from services.runtime.grpc_server import ServiceDefinition
from tests.conftest import TEST_SECRET, auth, make_settings, running_service

SERVICE = "docent.v1.IngestService"


class ProbeIngest(ingest_pb2_grpc.IngestServiceServicer):
    async def GetDocument(self, request, context):
        if request.document_id == "missing":
            raise NotFound("document not found", reason="DOCUMENT_NOT_FOUND", document_id="missing")
        if request.document_id == "boom":
            raise RuntimeError("secret internal detail: password=hunter2")
        return ingest_pb2.Document(id=request.document_id, user_id=current_user_id())

    async def WatchDocument(self, request, context):
        yield ingest_pb2.WatchDocumentResponse(document=ingest_pb2.Document(id="first"))
        raise NotFound("gone", reason="DOCUMENT_NOT_FOUND")


class ProbeApp:
    def __init__(self) -> None:
        self.ready = True
        self.closed = False

    def definition(self) -> ServiceDefinition:
        async def build() -> ProbeApp:
            return self

        return ServiceDefinition("probe", (SERVICE,), build)

    def register(self, server: grpc.aio.Server) -> None:
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(ProbeIngest(), server)

    async def check_ready(self) -> bool:
        return self.ready

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def probe():
    app = ProbeApp()
    async with running_service(app.definition(), make_settings(), ready_interval=0.05) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            yield app, ingest_pb2_grpc.IngestServiceStub(channel), channel


async def test_authenticated_call_sees_caller_identity(probe) -> None:
    _, stub, _ = probe
    document = await stub.GetDocument(ingest_pb2.GetDocumentRequest(document_id="d1"), metadata=auth("alice"),
                                      timeout=5)
    assert document.user_id == "alice"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Basic abc"),), "TOKEN_MISSING"),
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_INVALID"),
        ((("authorization", "Bearer " + mint_token("another-secret-" + "y" * 40, "alice", 60)),), "TOKEN_INVALID"),
        ((("authorization", "Bearer " + mint_token(TEST_SECRET, "alice", -10)),), "TOKEN_EXPIRED"),
    ],
)
async def test_missing_or_bad_token_is_unauthenticated_with_reason(probe, metadata, reason) -> None:
    _, stub, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetDocument(ingest_pb2.GetDocumentRequest(document_id="d1"), metadata=metadata, timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(raised.value)
    assert info is not None and info.reason == reason and info.domain == "docent"


async def test_alg_none_token_is_rejected(probe) -> None:
    import jwt

    _, stub, _ = probe
    forged = jwt.encode({"sub": "alice", "iss": "docent", "iat": 0, "exp": 2**31}, key=None, algorithm="none")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetDocument(ingest_pb2.GetDocumentRequest(document_id="d1"),
                               metadata=(("authorization", f"Bearer {forged}"),), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_domain_error_maps_to_status_and_error_info(probe) -> None:
    _, stub, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetDocument(ingest_pb2.GetDocumentRequest(document_id="missing"), metadata=auth("a"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "document not found"
    info = error_info(raised.value)
    assert info.reason == "DOCUMENT_NOT_FOUND" and info.metadata["document_id"] == "missing"


async def test_unexpected_exception_is_internal_without_leaking_text(probe) -> None:
    _, stub, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetDocument(ingest_pb2.GetDocumentRequest(document_id="boom"), metadata=auth("a"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (raised.value.details() or "")
    assert "RuntimeError" not in (raised.value.details() or "")
    assert error_info(raised.value).reason == "INTERNAL"


async def test_streaming_error_after_messages_keeps_its_code(probe) -> None:
    _, stub, _ = probe
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for message in stub.WatchDocument(ingest_pb2.WatchDocumentRequest(document_id="x"),
                                                metadata=auth("a"), timeout=5):
            received.append(message.document.id)
    assert received == ["first"]
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unimplemented_rpc_answers_unimplemented(probe) -> None:
    _, stub, _ = probe
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListDocuments(ingest_pb2.ListDocumentsRequest(), metadata=auth("a"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_follows_dependencies(probe) -> None:
    app, _, channel = probe
    health = health_pb2_grpc.HealthStub(channel)

    async def status() -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        return reply.status

    assert await status() == health_pb2.HealthCheckResponse.SERVING
    app.ready = False
    for _ in range(100):
        if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0.02)
    assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
    app.ready = True


async def test_health_goes_not_serving_on_shutdown() -> None:
    app = ProbeApp()
    settings = make_settings(grpc_grace_seconds=2.0)
    seen: list[int] = []
    async with running_service(app.definition(), settings, ready_interval=0.05) as target:
        channel = grpc.aio.insecure_channel(target)
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        seen.append((await stream.read()).status)
        watcher = asyncio.create_task(stream.read())
    # leaving the context sets the stop event: the server goes NOT_SERVING before it stops
    reply = await asyncio.wait_for(watcher, 5)
    seen.append(reply.status)
    await channel.close()
    assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    assert app.closed
