"""The REST contract end to end, against a real `docent up` (gateway, ingest, retrieval, chat, worker on
embedded Postgres/Redis/qdrant-edge and the local ONNX model): uploads, progress over SSE, chat with
sources, streaming, conversations, explain — and isolation between users."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import httpx
import pytest

from docent.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest.formats import REGISTRY
from tests.conftest import TESTDATA
from tests.stack import start_up

MAX_UPLOAD = 1_000_000
QUESTION = "Which Stata file versions can R's read.dta and write.dta handle?"
DOCUMENT_FIELDS = {"id", "user_id", "filename", "file_size", "mime_type", "vector_collection_id", "processing_status",
                   "processing_error", "task_id", "uploaded_at"}
SOURCE_FIELDS = {"document_id", "filename", "chunk_index", "relevance_score", "page_start", "page_end", "snippet"}


@pytest.fixture(scope="module")
def up():
    up = start_up({"DOCENT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)})
    try:
        up.wait_for("Docent is up", 180)
        up.track_descendants()
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def stack(up):
    return f"http://127.0.0.1:{up.ports['gateway']}"


class User:
    def __init__(self, client: httpx.AsyncClient, token: str, user_id: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.id = user_id

    async def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return await self.client.request(method, path, headers=self.headers, **kwargs)

    async def upload(self, name: str, content: bytes, content_type: str = "application/octet-stream"):
        return await self.request("POST", "/api/upload/", files={"file": (name, content, content_type)})

    async def events(self, method: str, path: str, **kwargs) -> list[tuple[str, dict]]:
        """All SSE events of a stream as (event, data)."""
        found: list[tuple[str, dict]] = []
        async with self.client.stream(method, path, headers=self.headers, **kwargs) as reply:
            assert reply.status_code == 200, await reply.aread()
            assert reply.headers["content-type"].startswith("text/event-stream")
            name = "message"
            async for line in reply.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    found.append((name, json.loads(line[6:])))
        return found


@pytest.fixture(scope="module")
async def client(stack):
    async with httpx.AsyncClient(base_url=stack, timeout=120) as client:
        yield client


async def new_user(client: httpx.AsyncClient) -> User:
    reply = await client.post("/api/auth/signup", json={
        "email": f"u-{uuid.uuid4().hex[:10]}@example.com", "username": "tester", "password": "password-123"})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    return User(client, body["access_token"], body["user"]["id"])


@pytest.fixture(scope="module")
async def alice(client) -> User:
    return await new_user(client)


@pytest.fixture(scope="module")
async def alice_document(alice) -> dict:
    """R-data_41p.pdf uploaded by alice and followed over SSE until completed."""
    content = (TESTDATA / "R-data_41p.pdf").read_bytes()
    reply = await alice.upload("R-data_41p.pdf", content, "application/pdf")
    assert reply.status_code == 202, reply.text
    document = reply.json()
    assert DOCUMENT_FIELDS <= document.keys()
    assert document["processing_status"] == "pending" and document["vector_collection_id"] is None
    assert (document["filename"], document["file_size"], document["user_id"]) == ("R-data_41p.pdf", len(content),
                                                                                  alice.id)
    events = await alice.events("GET", f"/api/upload/{document['id']}/events")
    names = [name for name, _ in events]
    assert names[-2:] == ["progress", "done"] and set(names) <= {"progress", "done"}
    statuses = [data["status"] for name, data in events if name == "progress"]
    assert statuses[-1] == "completed" and "processing" in statuses
    order = ["pending", "processing", "completed"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    percents = [data["progress"]["percent"] for _, data in events]
    assert percents == sorted(percents) and percents[-1] == 100
    done = events[-1][1]
    assert done["document"]["vector_collection_id"] and done["page_count"] == 41 and done["chunk_count"] > 0
    return done["document"]


async def test_document_endpoints(alice, alice_document) -> None:
    document_id = alice_document["id"]
    status = (await alice.request("GET", f"/api/upload/{document_id}/status")).json()
    assert {"document_id", "filename", "status", "error", "task", "progress"} <= status.keys()
    assert (status["document_id"], status["status"], status["error"]) == (document_id, "completed", None)
    assert status["task"]["task_state"] == "SUCCESS" and status["task"]["task_info"]["status"]
    assert status["progress"]["pages_done"] == status["progress"]["pages_total"] == 41

    listing = await alice.request("GET", "/api/upload/")
    assert listing.status_code == 200 and int(listing.headers["x-total-count"]) >= 1
    listed = next(d for d in listing.json() if d["id"] == document_id)
    assert DOCUMENT_FIELDS <= listed.keys() and listed["vector_collection_id"] is not None

    again = await alice.upload("copy.pdf", (TESTDATA / "R-data_41p.pdf").read_bytes(), "application/pdf")
    assert again.status_code == 202 and again.json()["id"] == document_id and again.json()["deduplicated"] is True

    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        for method, path in (("GET", f"/api/upload/{missing}/status"), ("DELETE", f"/api/upload/{missing}"),
                             ("GET", f"/api/upload/{missing}/events")):
            reply = await alice.request(method, path)
            assert reply.status_code == 404, (method, path)
            assert reply.json()["reason"] == "DOCUMENT_NOT_FOUND" and reply.json()["detail"]


async def test_replace_a_document_in_place(client, alice) -> None:
    """PUT /api/upload/{id}: 202 with the new version pending, the old one searched meanwhile; 404 for another
    user, 409 while a version is processed; the status carries the version history."""
    words = " ".join(f"word{number}" for number in range(300))
    first = await alice.upload("replace-me.md", f"# First\n\nThe first version. {words}".encode(), "text/markdown")
    assert first.status_code == 202, first.text
    document_id = first.json()["id"]
    assert first.json()["version"] == 1 and first.json()["pending_version"] is None
    assert [version["version"] for version in first.json()["versions"]] == [1]
    busy = await alice.request("PUT", f"/api/upload/{document_id}",
                               files={"file": ("v2.md", b"# Second\n\nThe second version.", "text/markdown")})
    assert busy.status_code == 409 and busy.json()["reason"] == "DOCUMENT_BUSY", busy.text
    await alice.events("GET", f"/api/upload/{document_id}/events")

    stranger = await new_user(client)
    other = await stranger.request("PUT", f"/api/upload/{document_id}",
                                   files={"file": ("v2.md", b"# Second\n\nThe second version.", "text/markdown")})
    assert other.status_code == 404 and other.json()["reason"] == "DOCUMENT_NOT_FOUND"

    reply = await alice.request("PUT", f"/api/upload/{document_id}",
                                files={"file": ("v2.md", b"# Second\n\nThe second version.", "text/markdown")})
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert DOCUMENT_FIELDS <= body.keys() and body["id"] == document_id and body["deduplicated"] is False
    assert (body["version"], body["pending_version"], body["filename"]) == (1, 2, "replace-me.md")
    assert body["vector_collection_id"] is not None  # the first version is still searchable
    events = await alice.events("GET", f"/api/upload/{document_id}/events")
    assert events[-1][0] == "done"
    status = (await alice.request("GET", f"/api/upload/{document_id}/status")).json()
    assert (status["status"], status["version"], status["pending_version"], status["filename"]) == (
        "completed", 2, None, "v2.md")
    assert [(v["version"], v["status"], v["active"]) for v in status["versions"]] == [
        (1, "completed", False), (2, "completed", True)]
    same = await alice.request("PUT", f"/api/upload/{document_id}",
                               files={"file": ("again.md", b"# Second\n\nThe second version.", "text/markdown")})
    assert same.status_code == 202 and same.json()["deduplicated"] is True and same.json()["version"] == 2
    assert (await alice.request("DELETE", f"/api/upload/{document_id}")).status_code == 204


def ingest_calls(up, method: str) -> float:
    """How many times the ingest service has answered `method` (its Prometheus counter)."""
    text = httpx.get(f"http://127.0.0.1:{up.ports['ingest_metrics']}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("docent_grpc_requests_total{") and f"/IngestService/{method}\"" in line)


async def test_file_types_are_the_ingest_registry(up, client, alice) -> None:
    registered = [(t.mime, t.label, list(t.extensions)) for t in REGISTRY.file_types]

    # the RPC: authenticated like every other, the registry in its order
    async with grpc.aio.insecure_channel(f"127.0.0.1:{up.ports['ingest']}") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        reply = await ingest.ListFileTypes(ingest_pb2.ListFileTypesRequest(), timeout=10,
                                           metadata=(("authorization", alice.headers["Authorization"]),))
        assert [(t.mime_type, t.label, list(t.extensions)) for t in reply.file_types] == registered
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ingest.ListFileTypes(ingest_pb2.ListFileTypesRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # the REST endpoint: the same list; kept by the gateway, so a second page load makes no gRPC call
    before = ingest_calls(up, "ListFileTypes")
    first = await alice.request("GET", "/api/file-types")
    assert first.status_code == 200, first.text
    assert first.json() == {"file_types": [{"mime_type": mime, "label": label, "extensions": extensions}
                                           for mime, label, extensions in registered]}
    assert first.headers["cache-control"] == "private, max-age=60"
    second = await (await new_user(client)).request("GET", "/api/file-types")
    assert second.status_code == 200 and second.json() == first.json()
    assert ingest_calls(up, "ListFileTypes") - before <= 1
    unauthenticated = await client.get("/api/file-types")
    assert unauthenticated.status_code == 401

    # the page's built-in list (its fallback when the call fails) offers only registered types
    page = (await client.get("/")).text
    accept = page.split('accept="', 1)[1].split('"', 1)[0].split(",")
    assert set(accept) <= set(REGISTRY.by_extension)
    assert all(label in {t.label for t in REGISTRY.file_types} for label in
               page.split('class="dropzone-hint">', 1)[1].split("<", 1)[0].split(", "))


async def test_bad_uploads(alice) -> None:
    exe = await alice.upload("tool.exe", b"MZ\x90\x00" + b"\x00" * 2000)
    assert exe.status_code == 415 and exe.json()["reason"] == "UNSUPPORTED_FILE_TYPE"
    empty = await alice.upload("empty.pdf", b"", "application/pdf")
    assert empty.status_code == 400 and empty.json()["reason"] == "EMPTY_FILE"
    # over the limit by more than multipart framing: refused by the gateway before the body is parsed
    big = await alice.upload("big.txt", b"a" * (MAX_UPLOAD * 2), "text/plain")
    assert big.status_code == 413 and big.json()["reason"] == "FILE_TOO_LARGE"
    # just over the limit: refused by IngestService while streaming (RESOURCE_EXHAUSTED → 413)
    edge = await alice.upload("edge.txt", b"b" * (MAX_UPLOAD + 10), "text/plain")
    assert edge.status_code == 413 and edge.json()["reason"] == "FILE_TOO_LARGE"
    no_file = await alice.request("POST", "/api/upload/", data={"other": "x"})
    assert no_file.status_code == 422 and isinstance(no_file.json()["detail"], list)


async def test_a_bad_file_ends_failed_with_its_reason(alice) -> None:
    reply = await alice.upload("secret.pdf", (TESTDATA / "encrypted_userpw_aes256_R-data_41p.pdf").read_bytes(),
                               "application/pdf")
    assert reply.status_code == 202
    events = await alice.events("GET", f"/api/upload/{reply.json()['id']}/events")
    final = events[-1][1]
    assert events[-1][0] == "done" and final["status"] == "failed"
    assert "password" in final["error"].lower() and final["task"]["task_state"] == "FAILURE"
    assert final["document"]["processing_error"] == final["error"]
    assert final["error_reason"] == final["document"]["error_reason"] == "PDF_ENCRYPTED"
    assert final["document"]["vector_collection_id"] is None
    status = (await alice.request("GET", f"/api/upload/{reply.json()['id']}/status")).json()
    assert (status["status"], status["error"], status["error_reason"]) == ("failed", final["error"], "PDF_ENCRYPTED")


async def test_chat_answers_with_sources_and_explain(alice, alice_document) -> None:
    reply = await alice.request("POST", "/api/chat/", json={"query": QUESTION, "explain": True})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert {"answer", "sources", "conversation_id", "chat_context_used"} <= body.keys()
    assert "12" in body["answer"] and body["chat_context_used"] is False
    assert body["sources"] and all(SOURCE_FIELDS <= source.keys() for source in body["sources"])
    assert any(s["document_id"] == alice_document["id"] and s["page_start"] <= 20 <= s["page_end"]
               for s in body["sources"])
    context = body["context"]
    assert [item["rank"] for item in context] == list(range(1, len(context) + 1))
    assert all({"source", "score", "weight", "rank"} <= item.keys() for item in context)
    assert context[0]["source"] == "documents" and context[0]["weight"] == pytest.approx(0.7)
    plain = await alice.request("POST", "/api/chat/", json={"query": QUESTION})
    assert "context" not in plain.json()

    follow = await alice.request("POST", "/api/chat/", json={"query": "And what about SPSS files?",
                                                             "conversation_id": body["conversation_id"]})
    assert follow.status_code == 200 and follow.json()["conversation_id"] == body["conversation_id"]
    assert follow.json()["chat_context_used"] is True  # the earlier turn was part of the context

    bad = await alice.request("POST", "/api/chat/", json={"query": ""})
    assert bad.status_code == 422
    unknown = await alice.request("POST", "/api/chat/", json={"query": "hi", "conversation_id": str(uuid.uuid4())})
    assert unknown.status_code == 404 and unknown.json()["detail"]


async def test_chat_stream_tokens_then_sources_then_the_stored_turn(alice, alice_document) -> None:
    events = await alice.events("POST", "/api/chat/stream", json={"query": QUESTION})
    names = [name for name, _ in events]
    assert names[0] == "conversation" and names[-2:] == ["sources", "done"]
    assert set(names[1:-2]) == {"token"}
    done = events[-1][1]
    assert "".join(data["delta"] for name, data in events if name == "token") == done["answer"]
    assert events[0][1]["conversation_id"] == done["conversation_id"]
    assert events[-2][1]["sources"] == done["sources"] and done["sources"]
    assert any(s["page_start"] <= 20 <= s["page_end"] for s in done["sources"])
    # the stored turn is what the conversation returns
    stored = (await alice.request("GET", f"/api/chat/conversations/{done['conversation_id']}")).json()
    assert stored["turns"][-1]["turn_id"] == done["turn_id"]
    assert stored["turns"][-1]["answer"] == done["answer"] and stored["turns"][-1]["sources"] == done["sources"]


async def test_conversations_list_get_delete(alice, alice_document) -> None:
    first = (await alice.request("POST", "/api/chat/", json={"query": "How do I read a CSV file?"})).json()
    await alice.request("POST", "/api/chat/", json={"query": "And with a tab separator?",
                                                    "conversation_id": first["conversation_id"]})
    second = (await alice.request("POST", "/api/chat/", json={"query": "What is an ODBC connection?"})).json()
    listing = (await alice.request("GET", "/api/chat/conversations")).json()
    ids = [c["id"] for c in listing["conversations"]]
    assert ids.index(second["conversation_id"]) < ids.index(first["conversation_id"])  # most recent first
    entry = next(c for c in listing["conversations"] if c["id"] == first["conversation_id"])
    assert entry["turn_count"] == 2 and entry["title"] and entry["created_at"] and entry["updated_at"]

    conversation = (await alice.request("GET", f"/api/chat/conversations/{first['conversation_id']}")).json()
    assert [t["query"] for t in conversation["turns"]] == ["How do I read a CSV file?", "And with a tab separator?"]
    explained = (await alice.request("GET", f"/api/chat/conversations/{first['conversation_id']}?explain=true")).json()
    assert "context" in explained["turns"][0] and "context" not in conversation["turns"][0]

    gone = await alice.request("DELETE", f"/api/chat/conversations/{first['conversation_id']}")
    assert gone.status_code == 204 and gone.content == b""
    assert (await alice.request("GET", f"/api/chat/conversations/{first['conversation_id']}")).status_code == 404
    assert (await alice.request("DELETE", f"/api/chat/conversations/{first['conversation_id']}")).status_code == 404
    ids = [c["id"] for c in (await alice.request("GET", "/api/chat/conversations")).json()["conversations"]]
    assert first["conversation_id"] not in ids and second["conversation_id"] in ids


async def test_users_are_isolated(client, alice, alice_document) -> None:
    conversation = (await alice.request("POST", "/api/chat/", json={"query": QUESTION})).json()
    bob = await new_user(client)
    document_id, conversation_id = alice_document["id"], conversation["conversation_id"]

    assert (await bob.request("GET", "/api/upload/")).json() == []
    for method, path in (("GET", f"/api/upload/{document_id}/status"), ("GET", f"/api/upload/{document_id}/events"),
                         ("DELETE", f"/api/upload/{document_id}"),
                         ("GET", f"/api/chat/conversations/{conversation_id}"),
                         ("DELETE", f"/api/chat/conversations/{conversation_id}")):
        reply = await bob.request(method, path)
        assert reply.status_code == 404, (method, path, reply.text)
    reply = await bob.request("POST", "/api/chat/", json={"query": "hello", "conversation_id": conversation_id})
    assert reply.status_code == 404
    stream = await bob.request("POST", "/api/chat/stream", json={"query": "hi", "conversation_id": conversation_id})
    assert stream.status_code == 404 and stream.headers["content-type"].startswith("application/json")
    assert conversation_id not in json.dumps((await bob.request("GET", "/api/chat/conversations")).json())

    # bob asks alice's question: nothing of alice's documents or chat memory reaches him
    answer = (await bob.request("POST", "/api/chat/", json={"query": QUESTION, "explain": True})).json()
    assert answer["sources"] == [] and answer["context"] == [] and answer["chat_context_used"] is False
    assert "versions 5 up to 12" not in answer["answer"]
    # alice's things are all still there
    assert (await alice.request("GET", f"/api/upload/{document_id}/status")).json()["status"] == "completed"
    assert (await alice.request("GET", f"/api/chat/conversations/{conversation_id}")).status_code == 200


async def test_delete_document_removes_it_from_answers(client) -> None:
    carol = await new_user(client)
    reply = await carol.upload("R-data_41p.pdf", (TESTDATA / "R-data_41p.pdf").read_bytes(), "application/pdf")
    document_id = reply.json()["id"]
    events = await carol.events("GET", f"/api/upload/{document_id}/events")
    assert events[-1][1]["status"] == "completed"
    before = (await carol.request("POST", "/api/chat/", json={"query": QUESTION})).json()
    assert any(s["document_id"] == document_id for s in before["sources"])

    deleted = await carol.request("DELETE", f"/api/upload/{document_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await carol.request("GET", f"/api/upload/{document_id}/status")).status_code == 404
    assert (await carol.request("GET", "/api/upload/")).json() == []
    after = (await carol.request("POST", "/api/chat/", json={"query": QUESTION, "explain": True,
                                                             "weights": {"documents": 1, "chat_history": 0}})).json()
    assert after["sources"] == [] and all(item["source"] != "documents" for item in after["context"])


async def test_sse_events_accept_the_token_in_the_query_for_eventsource(alice, alice_document) -> None:
    path = f"/api/upload/{alice_document['id']}/events"
    async with alice.client.stream("GET", path, params={"access_token": alice.headers["Authorization"][7:]}) as reply:
        assert reply.status_code == 200
        text = (await reply.aread()).decode()
    assert "event: done" in text
    refused = await alice.client.get("/api/upload/", params={"access_token": alice.headers["Authorization"][7:]})
    assert refused.status_code == 401  # only the SSE endpoints take it


async def test_ready_and_concurrent_chats(client, alice, alice_document) -> None:
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert set(ready.json()["upstreams"].values()) == {"SERVING"}
    replies = await asyncio.gather(*(alice.request("POST", "/api/chat/", json={"query": QUESTION}) for _ in range(8)))
    assert all(reply.status_code == 200 and reply.json()["sources"] for reply in replies)
    assert len({reply.json()["conversation_id"] for reply in replies}) == 8


async def test_a_question_finds_its_answer_in_another_language(client) -> None:
    """The default embedder (multilingual-e5-small) matches an English question with a German page and a
    German question with an English page, where the English-only MiniLM would not (tests/test_embedder_e5.py
    shows it failing on such pairs)."""
    user = await new_user(client)
    files = {
        "elternzeit.md": "# Elternzeit\n\nDer Antrag auf Elternzeit muss spätestens sieben Wochen vor Beginn "
                         "schriftlich beim Arbeitgeber gestellt werden.",
        "router.md": "# Router\n\nTo reset the router, hold the recessed button on the back for ten seconds until "
                     "the light blinks.",
        "receipts.md": "# 領収書\n\n領収書の再発行は、購入日から一年以内であれば窓口で受け付けます。",
    }
    ids = {}
    for name, text in files.items():
        reply = await user.upload(name, text.encode(), "text/markdown")
        assert reply.status_code == 202, reply.text
        ids[reply.json()["id"]] = name
    for document_id in ids:
        events = await user.events("GET", f"/api/upload/{document_id}/events")
        assert events[-1][1]["status"] == "completed", events[-1]
    for question, expected in (("How early must parental leave be requested from the employer?", "elternzeit.md"),
                               ("Wie setze ich den Router zurück?", "router.md")):
        reply = await user.request("POST", "/api/chat/", json={"query": question})
        assert reply.status_code == 200, reply.text
        sources = reply.json()["sources"]
        assert sources and ids[sources[0]["document_id"]] == expected, (question, sources)
