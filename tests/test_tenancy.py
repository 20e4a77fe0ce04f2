"""Isolation, proven (issue #17): every REST route and every gRPC method, tried by every kind of attacker.

One real `docent up` (gateway, ingest, retrieval, chat, worker), set up once. User A, the victim, owns a small
text document (completed), one conversation and its chat memory, an API key, and a collection it shares with C as
a viewer, holding a second document. Then every entry of CASES — one per REST route or gRPC method and id-bearing
field or filter — is performed by every ATTACKER kind:

* `other_user`: B's valid token, A's ids in the field;
* `revoked_token` / `expired_token`: A's own token after logout / after it expired, on A's own ids;
* `guessed_id` / `malformed_id`: B's valid token, a made-up well-formed id / a malformed one in the field;
* `collection_viewer`: C's valid token, A's ids: C may read the shared collection and its document, nothing more.

What must hold: a refusal (401/403/404; gRPC UNAUTHENTICATED/PERMISSION_DENIED/NOT_FOUND/INVALID_ARGUMENT) or,
where the route is legitimately the caller's own (a list, a search, a chat), only the caller's own data; never
a 5xx / INTERNAL, never anything of A's (ids, filename, email, chat text) in an answer; and after any write,
A's data as A sees it (document, conversation, document chunks and chat memory in the vector store) unchanged.

The suite fails when a REST route of the app (`app.routes`) or a gRPC method of the contract (the descriptors of
every docent.v1 *_pb2 module) has no case: a new endpoint comes with its tenancy case. To add an attacker kind
(e.g. API keys: a read-only key where write is needed, a revoked key, a key scoped to another collection), add an
Attacker to ATTACKERS with the credentials it presents (`Credentials` carries headers / gRPC metadata, not only
bearer tokens, and what of A's its holder may see) and, where it depends on the case, what it must get
(`Attacker.expect`); cases say whether they write (`Case.writes`).

Known bugs are strict xfails in KNOWN_BUGS. A's vectors are written back after an attack that got through, so
every case aims at A's data whatever subset runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import functools
import importlib
import inspect
import json
import pkgutil
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import httpx
import pytest
from fastapi.routing import APIRoute
from google.protobuf import json_format
from starlette.routing import Mount, Route

import docent.v1
from docent.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.runtime.auth import mint_token
from services.runtime.pagination import PageCursor
from tests.conftest import TEST_SECRET, make_settings
from tests.stack import UpProcess, start_up

pytestmark = pytest.mark.timeout(600)

PASSWORD = "password-123"
# A's secrets: words that appear nowhere but in A's data
A_FILENAME = "quokka-ledger-a7.txt"
A_TEXT = ("The quokka ledger of tenant A. Zebrafish counting protocol 7731 requires three observers at dawn.\n\n"
          "Observers record every zebrafish in the ledger and sign each page with a green pen.\n\n"
          "The ledger is kept in the north tower; the protocol number is 7731.\n")
A_QUESTION = "What does the zebrafish counting protocol require? marmaladeq4412"
A_CHAT_MARKER = "marmaladeq4412"
# what attackers ask: A's question without A's marker, as close to A's memory as can be
ATTACK_QUESTION = A_QUESTION.replace(" " + A_CHAT_MARKER, "")
A_COLLECTION = "quokka-team-a7"
SHARED_FILENAME = "shared-handbook-a7.txt"
SHARED_TEXT = ("The shared handbook of A's team. Zebrafish are counted by the team on Mondays.\n\n"
               "Every member may read this handbook.\n")
# not an id: SQL, a NUL (Postgres refuses it in text), a right-to-left override, an emoji
MALFORMED = "not-a-uuid' OR '1'='1\x00\u202e\U0001f600"
GRPC_TIMEOUT = 30.0
SSE_TIMEOUT = 15.0


# the world: the stack, the victim and the attacker ------------------------------------------------------------

@dataclass
class Tenant:
    user_id: str
    email: str
    token: str
    document_id: str = ""
    document_created: dt.datetime | None = None
    conversation_id: str = ""
    conversation_updated: dt.datetime | None = None
    turn_id: str = ""
    chunk_count: int = 0
    key_id: str = ""  # an API key of A's, where the build has them
    # where the build has collections: one A created (A its only member and owner), and A's personal one, which
    # holds A's document
    collection_id: str = ""
    personal_collection_id: str = ""
    shared_document_id: str = ""  # a document of A's in that collection, which A shares with C (a viewer)


@dataclass
class World:
    up: UpProcess
    http: httpx.AsyncClient
    ingest: ingest_pb2_grpc.IngestServiceStub
    chat: chat_pb2_grpc.ChatServiceStub
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub
    a: Tenant
    b: Tenant
    c: Tenant | None  # a viewer of A's collection, where the build has collections
    a_revoked_token: str
    embedding: list[float]
    embedding_model: str
    # A's state as last read and found unchanged (see `snapshot`); None: read it again
    state: dict[str, Any] | None = None
    # A's API keys the key attackers present, made on first use (name -> key)
    keys: dict[str, str] = field(default_factory=dict)

    def secrets(self) -> dict[str, str]:
        """What of A's must never reach anyone else."""
        return {"A's user id": self.a.user_id, "A's email": self.a.email, "A's filename": A_FILENAME,
                "A's chat text": A_CHAT_MARKER, "A's document id": self.a.document_id,
                "A's conversation id": self.a.conversation_id, "A's turn id": self.a.turn_id,
                **({"A's API key id": self.a.key_id} if self.a.key_id else {}),
                **({"A's collection id": self.a.collection_id, "A's collection name": A_COLLECTION,
                    "A's personal collection id": self.a.personal_collection_id,
                    "A's shared document id": self.a.shared_document_id, "A's shared filename": SHARED_FILENAME}
                   if self.a.collection_id else {})}

    def visible_collections(self, creds: Credentials) -> set[str]:
        """The collections of A's that the caller may see."""
        return {self.a.collection_id} if "A's collection id" in creds.sees else set()


# what a member of A's shared collection may see of A's: the collection, its document, who shares it
SHARED_WITH_MEMBERS = frozenset({"A's collection id", "A's collection name", "A's shared document id",
                                 "A's shared filename", "A's user id", "A's email"})


# credentials and ids: what an attacker presents ---------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """What a caller presents. `token` is what goes in `Authorization: Bearer` (and in `?access_token=` where a
    case sends it there); other kinds of credentials (API keys) can set `headers` / `metadata` instead."""

    user_id: str  # whom the server should take the caller for
    token: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # names of World.secrets the caller may legitimately see (what A shares with it)
    sees: frozenset[str] = frozenset()

    def http_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((name.lower(), value) for name, value in self.http_headers().items())


@dataclass(frozen=True)
class Ids:
    """The values an attacker puts in id-bearing fields and filters."""

    document_id: str
    conversation_id: str
    turn_id: str
    documents_page_token: str
    conversations_page_token: str
    email: str
    key_id: str
    collection_id: str           # collection management: A's own collection
    personal_collection_id: str  # document fields and filters: the collection holding A's document
    shared_document_id: str      # changing a document of a collection: A's document in A's shared collection
    # `?access_token=` of the SSE routes; None: the caller's own credentials
    access_token: str | None = None

    def values(self) -> set[str]:
        return {value for value in (self.document_id, self.conversation_id, self.turn_id, self.email, self.key_id,
                                    self.collection_id, self.personal_collection_id, self.shared_document_id)
                if value}


def page_token(at: dt.datetime | None, ident: str) -> str:
    """A keyset page token right after `ident` (at `at`): the next page a list that skipped the user filter
    would fill with that row."""
    return PageCursor((at or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=1), uuid.UUID(ident)).encode()


def victims_ids(world: World) -> Ids:
    a = world.a
    return Ids(a.document_id, a.conversation_id, a.turn_id, page_token(a.document_created, a.document_id),
               page_token(a.conversation_updated, a.conversation_id), a.email, a.key_id, a.collection_id,
               a.personal_collection_id, a.shared_document_id)


def guessed_ids(world: World) -> Ids:
    return Ids(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()),
               page_token(None, str(uuid.uuid4())), page_token(None, str(uuid.uuid4())),
               f"guess-{uuid.uuid4().hex[:8]}@example.com", *(str(uuid.uuid4()) for _ in range(4)),
               # a token for A's user id signed with a guessed secret
               access_token=mint_token("guessed-secret-" + "g" * 40, world.a.user_id, 600))


def malformed_ids(world: World) -> Ids:
    return Ids(*[MALFORMED] * 10, access_token=MALFORMED)


def attacker_b(world: World) -> Credentials:
    # a fresh token each time: a case may log it out
    return Credentials(world.b.user_id, mint_token(TEST_SECRET, world.b.user_id, 3600))


Expectation = tuple[set[Any], bool]  # the refusals allowed, and whether a success (own data only) is allowed too


@dataclass(frozen=True)
class Attacker:
    """One kind of attacker: the credentials it presents (may be async: e.g. create an API key first), the ids it
    puts in the fields, and what it must get.

    A kind whose answer depends on the case (a read-only API key: refused where `case.writes`, served elsewhere;
    a key of another collection) gives `expect(case, is_rest)`, returning an Expectation or None for the default
    rule (`expected`)."""

    name: str
    credentials: Callable[[World], Credentials | Awaitable[Credentials]]
    ids: Callable[[World], Ids]
    # False: the credentials must be refused (401 / UNAUTHENTICATED) whatever the request
    authenticated: bool
    # True: the attack is in the ids only, so it applies to cases with an id-bearing field only
    varies_ids_only: bool = False
    # the ids are malformed: 400/422 are fitting answers too
    malformed: bool = False
    expect: Callable[[Case, bool], Expectation | None] | None = None
    # a Tenant attribute A must have for the kind to apply (a feature this build may not have yet)
    requires: str = ""
    # the victim's own credentials (A's read-only key): A's data is the caller's own, so the isolation checks of
    # a successful answer (Case.check) do not apply; what must hold is that nothing changes
    victims_own: bool = False


def viewer_c(world: World) -> Credentials:
    assert world.c is not None
    return Credentials(world.c.user_id, mint_token(TEST_SECRET, world.c.user_id, 3600), sees=SHARED_WITH_MEMBERS)


# what any member may read of a collection it belongs to; everything else about A's collection needs more than a
# viewer's role, and A's personal data stays A's
MEMBER_READS = {"GET /api/collections/{collection_id}", "GET /api/collections/{collection_id}/members",
                "/docent.v1.IngestService/GetCollection", "/docent.v1.IngestService/ListCollectionMembers"}


def viewer_expect(case: Case, is_rest: bool) -> Expectation | None:
    if case.target in MEMBER_READS:
        return ({403, 404} if is_rest else {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}), True
    return None


# API keys of A's as attackers --------------------------------------------------------------------------------

async def a_key(world: World, name: str, *, revoke: bool = False, collection: bool = False, **body: Any) -> str:
    """An API key of A's, made once per module: `revoke` revokes it at once, `collection` limits it to a new,
    empty collection of A's."""
    if name not in world.keys:
        headers = bearer(world.a.token)
        if collection:
            made = await world.http.post("/api/collections/", headers=headers, json={"name": f"key scope {name}"})
            assert made.status_code == 201, made.text
            body["collection_ids"] = [made.json()["id"]]
        created = await world.http.post("/api/keys/", headers=headers, json={"name": name, **body})
        assert created.status_code == 201, created.text
        if revoke:
            revoked = await world.http.delete(f"/api/keys/{created.json()['id']}", headers=headers)
            assert revoked.status_code == 204, revoked.text
        world.keys[name] = created.json()["key"]
    return world.keys[name]


async def read_only_key(world: World) -> Credentials:
    # A's own key: everything of A's is the caller's own, but nothing may change
    return Credentials(world.a.user_id, await a_key(world, "read-only", access="read"),
                       sees=frozenset(world.secrets()))


async def revoked_key(world: World) -> Credentials:
    return Credentials(world.a.user_id, await a_key(world, "revoked", access="write", revoke=True))


async def other_collection_key(world: World) -> Credentials:
    # A's write key limited to a collection that holds nothing of A's: A's documents, collections,
    # conversations and chat memory are out of its reach; it still acts as A
    return Credentials(world.a.user_id, await a_key(world, "other-collection", access="write", collection=True),
                       sees=frozenset({"A's user id", "A's email"}))


# what a read-only key must never do, even to its own user's data: change documents, conversations,
# collections, keys or sessions (the retrieval service takes no keys at all)
READ_KEY_REFUSED = {
    "POST /api/upload/", "PUT /api/upload/{document_id}", "DELETE /api/upload/{document_id}",
    "DELETE /api/chat/conversations/{conversation_id}", "POST /api/keys/", "GET /api/keys/",
    "DELETE /api/keys/{key_id}", "POST /api/auth/logout", "POST /api/collections/",
    "PATCH /api/collections/{collection_id}", "DELETE /api/collections/{collection_id}",
    "POST /api/collections/{collection_id}/members", "DELETE /api/collections/{collection_id}/members/{user_id}",
    *(f"/docent.v1.IngestService/{name}" for name in (
        "UploadDocument", "ReplaceDocument", "DeleteDocument", "CreateCollection", "UpdateCollection",
        "DeleteCollection", "SetCollectionMember", "DeleteCollectionMember")),
    "/docent.v1.ChatService/DeleteConversation",
}
KEY_REFUSED_REST = {401, 403, 404}
KEY_REFUSED_GRPC = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}


def read_key_refuses(case: Case) -> bool:
    return (case.target in READ_KEY_REFUSED or case.target.startswith("/docent.v1.RetrievalService/")
            or case.foreign is Foreign.OPERATOR)


def read_key_expect(case: Case, is_rest: bool) -> Expectation | None:
    if case.public:
        return None
    refused = KEY_REFUSED_REST if is_rest else KEY_REFUSED_GRPC
    return (refused | case.refusals), not read_key_refuses(case)


def scoped_key_expect(case: Case, is_rest: bool) -> Expectation | None:
    """As another user would be answered, and UNAUTHENTICATED from the retrieval service, which takes no keys."""
    if case.public or is_rest or not case.target.startswith("/docent.v1.RetrievalService/"):
        return None
    return {grpc.StatusCode.UNAUTHENTICATED}, False


ATTACKERS: tuple[Attacker, ...] = (
    Attacker("other_user", attacker_b, victims_ids, authenticated=True),
    Attacker("revoked_token", lambda w: Credentials(w.a.user_id, w.a_revoked_token), victims_ids,
             authenticated=False),
    Attacker("expired_token", lambda w: Credentials(w.a.user_id, mint_token(TEST_SECRET, w.a.user_id, -120)),
             victims_ids, authenticated=False),
    Attacker("guessed_id", attacker_b, guessed_ids, authenticated=True, varies_ids_only=True),
    Attacker("malformed_id", attacker_b, malformed_ids, authenticated=True, varies_ids_only=True, malformed=True),
    # C, a viewer of A's collection: A's ids; may read that collection and its document, nothing else of A's
    Attacker("collection_viewer", viewer_c, victims_ids, authenticated=True, expect=viewer_expect,
             requires="collection_id"),
    # A's own API keys: a read-only one where a write is needed, a revoked one, one limited to another collection
    Attacker("read_only_key", read_only_key, victims_ids, authenticated=True, expect=read_key_expect,
             requires="key_id", victims_own=True),
    Attacker("revoked_key", revoked_key, victims_ids, authenticated=False, requires="key_id"),
    Attacker("other_collection_key", other_collection_key, victims_ids, authenticated=True,
             expect=scoped_key_expect, requires="collection_id"),
)


# outcomes -----------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one attempt got: an HTTP status or a gRPC code, the text to search for leaks, the parsed answer."""

    status: int | grpc.StatusCode
    text: str
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.status == grpc.StatusCode.OK or (isinstance(self.status, int) and 200 <= self.status < 300)


async def rest(world: World, creds: Credentials, method: str, path: str, *, headers: bool = True,
               **kwargs: Any) -> Outcome:
    reply = await world.http.request(method, path, headers=creds.http_headers() if headers else {}, **kwargs)
    try:
        data = reply.json()
    except ValueError:
        data = None
    return Outcome(reply.status_code, reply.text, data)


async def rest_sse(world: World, creds: Credentials, method: str, path: str, *, headers: bool = True,
                   **kwargs: Any) -> Outcome:
    """An SSE route: its error before the stream, or all its events (a leak would be A's stream)."""
    async def read() -> Outcome:
        async with world.http.stream(method, path, headers=creds.http_headers() if headers else {},
                                     **kwargs) as reply:
            body = (await reply.aread()).decode(errors="replace")
        events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
        return Outcome(reply.status_code, body, events)

    return await asyncio.wait_for(read(), SSE_TIMEOUT)


async def rpc(call: Any, request: Any, creds: Credentials) -> Outcome:
    try:
        reply = await call(request, metadata=creds.metadata(), timeout=GRPC_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error.details() or "")
    return Outcome(grpc.StatusCode.OK, json_format.MessageToJson(reply), reply)


async def rpc_stream(call: Any, request: Any, creds: Credentials) -> Outcome:
    messages: list[Any] = []
    try:
        async def collect() -> None:
            async for message in call(request, metadata=creds.metadata(), timeout=GRPC_TIMEOUT):
                messages.append(message)
                if len(messages) > 200:
                    break
        await asyncio.wait_for(collect(), SSE_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), (error.details() or "") + "".join(json_format.MessageToJson(m) for m in messages))
    return Outcome(grpc.StatusCode.OK, "".join(json_format.MessageToJson(m) for m in messages), messages)


# the cases ----------------------------------------------------------------------------------------------------

class Foreign(enum.Enum):
    """What an authenticated attacker must get from a case."""

    DENY = "deny"            # a refusal: the field points at something that is not the caller's
    OWN_ONLY = "own_only"    # success is fine (a list, a search, a chat, an upload), with the caller's own data only
    OPERATOR = "operator"    # an operator method: PERMISSION_DENIED for every user token


Perform = Callable[[World, Credentials, Ids], Awaitable[Outcome]]
Check = Callable[[World, Credentials, Ids, Outcome], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    target: str            # "GET /api/upload/{document_id}" or "/docent.v1.IngestService/GetDocument"
    field: str | None      # the id-bearing field or filter attacked; None when there is none
    perform: Perform
    foreign: Foreign
    writes: bool = False   # changes something: A's data is compared before and after
    public: bool = False   # no credentials (signup, signin): only the ids matter
    check: Check | None = None  # more about a successful answer
    # refusals fitting this case besides the usual ones (a taken email: 409)
    refusals: frozenset[Any] = frozenset()
    # a Tenant attribute A must have for the case to apply (a field of a feature this build may not have yet)
    requires: str = ""

    @property
    def name(self) -> str:
        return f"{self.target}[{self.field}]" if self.field else self.target

    def __post_init__(self) -> None:
        if self.field and ("collection" in self.field or "shared" in self.field) and not self.requires:
            object.__setattr__(self, "requires", "collection_id")


# REST performers ----

def seg(value: str) -> str:
    """`value` as one path segment."""
    return urllib.parse.quote(value, safe="")


def upload_path(ids: Ids, suffix: str = "") -> str:
    return f"/api/upload/{seg(ids.document_id)}{suffix}"


async def rest_signup(w: World, c: Credentials, ids: Ids) -> Outcome:
    return await rest(w, c, "POST", "/api/auth/signup", json={"email": ids.email, "username": "mallory",
                                                               "password": PASSWORD})


async def check_signup(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert outcome.data["user"]["email"] == ids.email and outcome.data["user"]["id"] != w.a.user_id


async def rest_signin(w: World, c: Credentials, ids: Ids) -> Outcome:
    return await rest(w, c, "POST", "/api/auth/signin", json={"email": ids.email, "password": "wrong-password-9"})


async def check_me(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert outcome.data["id"] == c.user_id


def rest_upload(field_name: str | None = None) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        return await rest_upload_into(w, c, ids.personal_collection_id if field_name == "collection_id" else None)
    return perform


async def rest_upload_into(w: World, c: Credentials, collection_id: str | None) -> Outcome:
    # A's very bytes: a deduplication across users would answer with A's document
    params = {"collection_id": collection_id} if collection_id is not None else {}
    outcome = await rest(w, c, "POST", "/api/upload/", params=params,
                         files={"file": ("copy.txt", A_TEXT.encode(), "text/plain")})
    if outcome.ok:
        gone = await w.http.delete(f"/api/upload/{outcome.data['id']}", headers=c.http_headers())
        assert gone.status_code == 204, gone.text
    return outcome


async def check_document_is_callers(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert outcome.data["user_id"] == c.user_id and outcome.data["id"] != w.a.document_id
    assert outcome.data.get("collection_id") not in {w.a.collection_id, w.a.personal_collection_id} - {""}


async def check_documents_are_callers(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    for document in outcome.data:
        assert document["id"] != w.a.document_id
        assert document["user_id"] == c.user_id or document.get("collection_id") in w.visible_collections(c)


def not_a_sources(w: World, sources: list[dict]) -> None:
    assert all(source["document_id"] != w.a.document_id for source in sources), sources


def not_a_context(w: World, context: list[dict]) -> None:
    for item in context:
        assert (item.get("document") or {}).get("document_id") != w.a.document_id, item
        turn = item.get("chat_turn") or {}
        assert turn.get("conversation_id") != w.a.conversation_id and turn.get("turn_id") != w.a.turn_id, item


def chat_body(ids: Ids, field_name: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": ATTACK_QUESTION, "explain": True,
                            "weights": {"documents": 0.5, "chat_history": 0.5}}
    if field_name == "conversation_id":
        body["conversation_id"] = ids.conversation_id
    elif field_name == "document_ids":
        body["document_ids"] = [ids.document_id]
    elif field_name == "collection_ids":
        body["collection_ids"] = [ids.personal_collection_id]
    return body


def rest_chat(field_name: str | None) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        return await rest(w, c, "POST", "/api/chat/", json=chat_body(ids, field_name))
    return perform


async def check_chat_answer(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    body = outcome.data
    assert body["conversation_id"] != w.a.conversation_id
    not_a_sources(w, body["sources"])
    not_a_context(w, body.get("context", []))


def rest_chat_stream(field_name: str | None, *, query_token: bool = False) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        if query_token:  # credentials in `?access_token=`, which only the GET /events routes read
            token = ids.access_token if ids.access_token is not None else c.token
            return await rest_sse(w, c, "POST", "/api/chat/stream", headers=False, params={"access_token": token},
                                  json=chat_body(ids, "conversation_id"))
        return await rest_sse(w, c, "POST", "/api/chat/stream", json=chat_body(ids, field_name))
    return perform


async def check_chat_stream(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    done = json.loads(outcome.data[-1])
    await check_chat_answer(w, c, ids, Outcome(200, "", done))


def rest_events(*, query_token: bool) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        if query_token:  # EventSource's way: the token in the query, no header
            token = ids.access_token if ids.access_token is not None else c.token
            # with a guessed or malformed token, the target is A's document
            path = upload_path(ids if ids.access_token is None else victims_ids(w), "/events")
            return await rest_sse(w, c, "GET", path, headers=False, params={"access_token": token})
        return await rest_sse(w, c, "GET", upload_path(ids, "/events"))
    return perform


async def rest_list_conversations(w: World, c: Credentials, ids: Ids) -> Outcome:
    return await rest(w, c, "GET", "/api/chat/conversations", params={"page_token": ids.conversations_page_token})


async def check_conversations_are_callers(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert all(conversation["id"] != w.a.conversation_id for conversation in outcome.data["conversations"])


# gRPC performers ----

def grpc_upload(field_name: str | None = None) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        metadata = ingest_pb2.UploadMetadata(filename="copy.txt", content_type="text/plain")
        if field_name == "collection_id":
            metadata.collection_id = ids.personal_collection_id
        return await grpc_upload_with(w, c, metadata)
    return perform


async def grpc_upload_with(w: World, c: Credentials, metadata: ingest_pb2.UploadMetadata) -> Outcome:
    async def messages() -> AsyncIterator[ingest_pb2.UploadDocumentRequest]:
        yield ingest_pb2.UploadDocumentRequest(metadata=metadata)
        yield ingest_pb2.UploadDocumentRequest(chunk=A_TEXT.encode())

    outcome = await rpc(w.ingest.UploadDocument, messages(), c)
    if outcome.ok:
        await w.ingest.DeleteDocument(ingest_pb2.DeleteDocumentRequest(document_id=outcome.data.document.id),
                                      metadata=c.metadata(), timeout=GRPC_TIMEOUT)
    return outcome


async def check_uploaded_is_callers(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    document = outcome.data.document
    assert document.user_id == c.user_id and document.id != w.a.document_id
    assert getattr(document, "collection_id", "") not in {w.a.collection_id, w.a.personal_collection_id} - {""}


def grpc_replace(field_name: str = "document_id") -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        document_id = ids.shared_document_id if field_name == "shared_document_id" else ids.document_id

        async def messages() -> AsyncIterator[Any]:
            yield ingest_pb2.ReplaceDocumentRequest(metadata=ingest_pb2.ReplaceMetadata(
                document_id=document_id, filename="replaced.txt", content_type="text/plain"))
            yield ingest_pb2.ReplaceDocumentRequest(chunk=b"Replaced by somebody else entirely.\n")

        return await rpc(w.ingest.ReplaceDocument, messages(), c)
    return perform


def grpc_list_documents(field_name: str) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        request = ingest_pb2.ListDocumentsRequest(page_size=100)
        if field_name == "collection_id":
            request.collection_id = ids.personal_collection_id
        else:
            request.page_token = ids.documents_page_token
        return await rpc(w.ingest.ListDocuments, request, c)
    return perform


async def check_listed_documents(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    for document in outcome.data.documents:
        assert document.id != w.a.document_id
        assert document.user_id == c.user_id or document.collection_id in w.visible_collections(c)


def grpc_chat(field_name: str | None, *, stream: bool = False) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        options = chat_pb2.ChatOptions(weights=retrieval_pb2.SourceWeights(documents=0.5, chat_history=0.5))
        if field_name == "conversation_id":
            options.conversation_id = ids.conversation_id
        elif field_name == "document_ids":
            options.document_ids.append(ids.document_id)
        elif field_name == "collection_ids":
            options.collection_ids.append(ids.personal_collection_id)
        if stream:
            return await rpc_stream(w.chat.StreamChat, chat_pb2.StreamChatRequest(query=ATTACK_QUESTION,
                                                                                options=options),
                                    c)
        return await rpc(w.chat.Chat, chat_pb2.ChatRequest(query=ATTACK_QUESTION, options=options), c)
    return perform


def check_turn(w: World, turn: chat_pb2.ChatTurn) -> None:
    assert turn.conversation_id != w.a.conversation_id
    assert all(source.document_id != w.a.document_id for source in turn.sources)
    check_results(w, turn.context)
    assert w.a.turn_id not in turn.history_turn_ids


async def check_chat_turn(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    if isinstance(outcome.data, list):
        turns = [message.turn for message in outcome.data if message.WhichOneof("event") == "turn"]
        assert len(turns) == 1
        check_turn(w, turns[0])
    else:
        check_turn(w, outcome.data.turn)


async def grpc_list_conversations(w: World, c: Credentials, ids: Ids) -> Outcome:
    return await rpc(w.chat.ListConversations, chat_pb2.ListConversationsRequest(
        page_size=100, page_token=ids.conversations_page_token), c)


async def check_listed_conversations(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert all(conversation.id != w.a.conversation_id for conversation in outcome.data.conversations)


def check_results(w: World, results: Any) -> None:
    for result in results:
        if result.HasField("document"):
            assert result.document.document_id != w.a.document_id, result
            assert result.document.filename != A_FILENAME, result
        else:
            assert result.chat_turn.conversation_id != w.a.conversation_id, result
            assert result.chat_turn.turn_id != w.a.turn_id, result
            assert A_CHAT_MARKER not in result.chat_turn.user_message, result


def grpc_search(field_name: str | None) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        request = retrieval_pb2.SearchRequest(
            query=ATTACK_QUESTION, top_k=100, mode=retrieval_pb2.SEARCH_MODE_DENSE,
            weights=retrieval_pb2.SourceWeights(documents=0.5, chat_history=0.5),
            min_score_documents=-1.0, min_score_chat_history=-1.0)
        if field_name == "document_ids":
            request.document_ids.append(ids.document_id)
        elif field_name == "conversation_id":
            request.conversation_id = ids.conversation_id
        elif field_name == "exclude_conversation_id":
            request.exclude_conversation_id = ids.conversation_id
        return await rpc(w.retrieval.Search, request, c)
    return perform


async def check_search(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    check_results(w, outcome.data.results)
    assert not outcome.data.chat_context_used or all(
        r.chat_turn.conversation_id != w.a.conversation_id for r in outcome.data.results if r.HasField("chat_turn"))


def grpc_upsert_chunks(field_name: str) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        chunks = [retrieval_pb2.Chunk(chunk_index=index, text=f"Injected over chunk {index} by somebody else.",
                                      page_start=1, page_end=1, embedding=w.embedding, token_count=8)
                  for index in range(max(w.a.chunk_count, 1))]
        request = retrieval_pb2.UpsertChunksRequest(filename="injected.txt", chunks=chunks,
                                                    embedding_model=w.embedding_model)
        if field_name == "collection_id":  # chunks of a new document, into A's collection
            request.document_id, request.collection_id = str(uuid.uuid4()), ids.personal_collection_id
        else:
            request.document_id = ids.document_id
        if "version" in request.DESCRIPTOR.fields_by_name:  # versioned documents: over A's active version
            request.version = 1
        return await rpc(w.retrieval.UpsertChunks, request, c)
    return perform


def grpc_upsert_chat_turn(field_name: str) -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        request = retrieval_pb2.UpsertChatTurnRequest(
            turn_id=ids.turn_id if field_name == "turn_id" else str(uuid.uuid4()),
            conversation_id=ids.conversation_id if field_name == "conversation_id" else str(uuid.uuid4()),
            user_message="injected question", assistant_message="injected answer",
            embedding=w.embedding, embedding_model=w.embedding_model)
        return await rpc(w.retrieval.UpsertChatTurn, request, c)
    return perform


def shared(ids: Ids) -> Ids:
    """The ids with the shared document in the document id's place."""
    return replace(ids, document_id=ids.shared_document_id)


def rest_replace(field_name: str = "document_id") -> Perform:
    async def perform(w: World, c: Credentials, ids: Ids) -> Outcome:
        target = shared(ids) if field_name == "shared_document_id" else ids
        return await rest(w, c, "PUT", upload_path(target),
                          files={"file": ("replaced.txt", b"Replaced by somebody else entirely.\n", "text/plain")})
    return perform


async def rest_create_key(w: World, c: Credentials, ids: Ids) -> Outcome:
    outcome = await rest(w, c, "POST", "/api/keys/", json={"name": "attacker", "access": "write"})
    if outcome.ok:  # the caller's own key: revoke it again
        gone = await w.http.delete(f"/api/keys/{outcome.data['id']}", headers=c.http_headers())
        assert gone.status_code == 204, gone.text
    return outcome


async def check_keys_are_callers(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert all(key["id"] != w.a.key_id for key in outcome.data["keys"])


async def grpc_activate_version(w: World, c: Credentials, ids: Ids) -> Outcome:
    # another version of A's document: activating it removes the document's other versions' chunks
    return await rpc(w.retrieval.ActivateDocumentVersion, retrieval_pb2.ActivateDocumentVersionRequest(
        document_id=ids.document_id, version=2), c)


def collection_path(ids: Ids, suffix: str = "") -> str:
    return f"/api/collections/{seg(ids.collection_id)}{suffix}"


async def rest_create_collection(w: World, c: Credentials, ids: Ids) -> Outcome:
    outcome = await rest(w, c, "POST", "/api/collections/", json={"name": "attacker's"})
    if outcome.ok:  # the caller's own: delete it again
        gone = await w.http.delete(f"/api/collections/{outcome.data['id']}", headers=c.http_headers())
        assert gone.status_code == 204, gone.text
    return outcome


def hidden_collections(w: World, c: Credentials) -> set[str]:
    return {w.a.collection_id, w.a.personal_collection_id} - w.visible_collections(c)


async def check_collections_are_callers(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert not {item["id"] for item in outcome.data["collections"]} & hidden_collections(w, c)


async def rest_add_member(w: World, c: Credentials, ids: Ids) -> Outcome:
    # the attacker adds itself, as owner
    return await rest(w, c, "POST", collection_path(ids, "/members"), json={"email": w.b.email, "role": "owner"})


async def grpc_create_collection(w: World, c: Credentials, ids: Ids) -> Outcome:
    outcome = await rpc(w.ingest.CreateCollection, ingest_pb2.CreateCollectionRequest(name="attacker's"), c)
    if outcome.ok:
        await w.ingest.DeleteCollection(ingest_pb2.DeleteCollectionRequest(
            collection_id=outcome.data.collection.id), metadata=c.metadata(), timeout=GRPC_TIMEOUT)
    return outcome


async def check_listed_collections(w: World, c: Credentials, ids: Ids, outcome: Outcome) -> None:
    assert not {item.id for item in outcome.data.collections} & hidden_collections(w, c)


def _rest_case(method: str, path: str, field_name: str | None, perform: Perform, foreign: Foreign,
               **kwargs: Any) -> Case:
    return Case(f"{method} {path}", field_name, perform, foreign, **kwargs)


def _rpc_case(service: str, method: str, field_name: str | None, perform: Perform, foreign: Foreign,
              **kwargs: Any) -> Case:
    return Case(f"/docent.v1.{service}/{method}", field_name, perform, foreign, **kwargs)


DENY, OWN, OP = Foreign.DENY, Foreign.OWN_ONLY, Foreign.OPERATOR
CASES: tuple[Case, ...] = (
    # REST: accounts
    _rest_case("POST", "/api/auth/signup", "email", rest_signup, OWN, public=True, writes=True, check=check_signup,
               refusals=frozenset({409})),
    _rest_case("POST", "/api/auth/signin", "email", rest_signin, OWN, public=True),
    _rest_case("GET", "/api/auth/me", None, lambda w, c, i: rest(w, c, "GET", "/api/auth/me"), OWN, check=check_me),
    _rest_case("POST", "/api/auth/logout", None, lambda w, c, i: rest(w, c, "POST", "/api/auth/logout"), OWN,
               writes=True),
    _rest_case("POST", "/api/keys/", None, rest_create_key, OWN, writes=True),
    _rest_case("GET", "/api/keys/", None, lambda w, c, i: rest(w, c, "GET", "/api/keys/"), OWN,
               check=check_keys_are_callers),
    _rest_case("DELETE", "/api/keys/{key_id}", "key_id",
               lambda w, c, i: rest(w, c, "DELETE", f"/api/keys/{seg(i.key_id)}"), DENY, writes=True),
    _rest_case("GET", "/api/usage", None, lambda w, c, i: rest(w, c, "GET", "/api/usage"), OWN),
    # REST: collections
    _rest_case("POST", "/api/collections/", None, rest_create_collection, OWN, writes=True),
    _rest_case("GET", "/api/collections/", None, lambda w, c, i: rest(w, c, "GET", "/api/collections/"), OWN,
               check=check_collections_are_callers),
    _rest_case("GET", "/api/collections/{collection_id}", "collection_id",
               lambda w, c, i: rest(w, c, "GET", collection_path(i)), DENY),
    _rest_case("PATCH", "/api/collections/{collection_id}", "collection_id",
               lambda w, c, i: rest(w, c, "PATCH", collection_path(i), json={"name": "renamed by B"}), DENY,
               writes=True),
    _rest_case("DELETE", "/api/collections/{collection_id}", "collection_id",
               lambda w, c, i: rest(w, c, "DELETE", collection_path(i)), DENY, writes=True),
    _rest_case("GET", "/api/collections/{collection_id}/members", "collection_id",
               lambda w, c, i: rest(w, c, "GET", collection_path(i, "/members")), DENY),
    _rest_case("POST", "/api/collections/{collection_id}/members", "collection_id", rest_add_member, DENY,
               writes=True),
    _rest_case("DELETE", "/api/collections/{collection_id}/members/{user_id}", "collection_id",
               lambda w, c, i: rest(w, c, "DELETE", collection_path(i, f"/members/{w.a.user_id}")), DENY,
               writes=True),
    # REST: documents
    _rest_case("POST", "/api/upload/", None, rest_upload(), OWN, writes=True, check=check_document_is_callers),
    _rest_case("POST", "/api/upload/", "collection_id", rest_upload("collection_id"), DENY, writes=True),
    _rest_case("GET", "/api/upload/", None, lambda w, c, i: rest(w, c, "GET", "/api/upload/"), OWN,
               check=check_documents_are_callers),
    _rest_case("GET", "/api/upload/", "collection_id", lambda w, c, i: rest(
        w, c, "GET", "/api/upload/", params={"collection_id": i.personal_collection_id}), DENY),
    _rest_case("PUT", "/api/upload/{document_id}", "document_id", rest_replace(), DENY, writes=True),
    _rest_case("PUT", "/api/upload/{document_id}", "shared_document_id", rest_replace("shared_document_id"), DENY,
               writes=True),
    _rest_case("GET", "/api/upload/{document_id}", "document_id",
               lambda w, c, i: rest(w, c, "GET", upload_path(i)), DENY),
    _rest_case("GET", "/api/upload/{document_id}/status", "document_id",
               lambda w, c, i: rest(w, c, "GET", upload_path(i, "/status")), DENY),
    _rest_case("DELETE", "/api/upload/{document_id}", "document_id",
               lambda w, c, i: rest(w, c, "DELETE", upload_path(i)), DENY, writes=True),
    _rest_case("DELETE", "/api/upload/{document_id}", "shared_document_id",
               lambda w, c, i: rest(w, c, "DELETE", upload_path(shared(i))), DENY, writes=True),
    _rest_case("GET", "/api/upload/{document_id}/events", "document_id", rest_events(query_token=False), DENY),
    _rest_case("GET", "/api/upload/{document_id}/events", "access_token", rest_events(query_token=True), DENY),
    _rest_case("GET", "/api/file-types", None, lambda w, c, i: rest(w, c, "GET", "/api/file-types"), OWN),
    # REST: chat
    _rest_case("POST", "/api/chat/", None, rest_chat(None), OWN, writes=True, check=check_chat_answer),
    _rest_case("POST", "/api/chat/", "conversation_id", rest_chat("conversation_id"), DENY, writes=True),
    _rest_case("POST", "/api/chat/", "document_ids", rest_chat("document_ids"), OWN, writes=True,
               check=check_chat_answer),
    _rest_case("POST", "/api/chat/", "collection_ids", rest_chat("collection_ids"), OWN, writes=True,
               check=check_chat_answer),
    _rest_case("POST", "/api/chat/stream", None, rest_chat_stream(None), OWN, writes=True, check=check_chat_stream),
    _rest_case("POST", "/api/chat/stream", "conversation_id", rest_chat_stream("conversation_id"), DENY, writes=True),
    _rest_case("POST", "/api/chat/stream", "document_ids", rest_chat_stream("document_ids"), OWN, writes=True,
               check=check_chat_stream),
    _rest_case("POST", "/api/chat/stream", "collection_ids", rest_chat_stream("collection_ids"), OWN, writes=True,
               check=check_chat_stream),
    _rest_case("POST", "/api/chat/stream", "access_token", rest_chat_stream(None, query_token=True), DENY, writes=True),
    _rest_case("GET", "/api/chat/conversations", "page_token", rest_list_conversations, OWN,
               check=check_conversations_are_callers),
    _rest_case("GET", "/api/chat/conversations/{conversation_id}", "conversation_id",
               lambda w, c, i: rest(w, c, "GET", f"/api/chat/conversations/{seg(i.conversation_id)}",
                                    params={"explain": "true"}), DENY),
    _rest_case("DELETE", "/api/chat/conversations/{conversation_id}", "conversation_id",
               lambda w, c, i: rest(w, c, "DELETE", f"/api/chat/conversations/{seg(i.conversation_id)}"), DENY,
               writes=True),
    # gRPC: IngestService
    _rpc_case("IngestService", "UploadDocument", None, grpc_upload(), OWN, writes=True,
              check=check_uploaded_is_callers),
    _rpc_case("IngestService", "UploadDocument", "collection_id", grpc_upload("collection_id"), DENY, writes=True),
    _rpc_case("IngestService", "ReplaceDocument", "document_id", grpc_replace(), DENY, writes=True),
    _rpc_case("IngestService", "ReplaceDocument", "shared_document_id", grpc_replace("shared_document_id"), DENY,
              writes=True),
    _rpc_case("IngestService", "GetDocument", "document_id", lambda w, c, i: rpc(
        w.ingest.GetDocument, ingest_pb2.GetDocumentRequest(document_id=i.document_id), c), DENY),
    _rpc_case("IngestService", "ListDocuments", "page_token", grpc_list_documents("page_token"), OWN,
              check=check_listed_documents),
    _rpc_case("IngestService", "ListDocuments", "collection_id", grpc_list_documents("collection_id"), DENY),
    _rpc_case("IngestService", "DeleteDocument", "document_id", lambda w, c, i: rpc(
        w.ingest.DeleteDocument, ingest_pb2.DeleteDocumentRequest(document_id=i.document_id), c), DENY, writes=True),
    _rpc_case("IngestService", "DeleteDocument", "shared_document_id", lambda w, c, i: rpc(
        w.ingest.DeleteDocument, ingest_pb2.DeleteDocumentRequest(document_id=i.shared_document_id), c), DENY,
        writes=True),
    _rpc_case("IngestService", "WatchDocument", "document_id", lambda w, c, i: rpc_stream(
        w.ingest.WatchDocument, ingest_pb2.WatchDocumentRequest(document_id=i.document_id), c), DENY),
    _rpc_case("IngestService", "ReindexDocuments", None, lambda w, c, i: rpc(
        w.ingest.ReindexDocuments, ingest_pb2.ReindexDocumentsRequest(), c), OP, writes=True),
    _rpc_case("IngestService", "ListFileTypes", None, lambda w, c, i: rpc(
        w.ingest.ListFileTypes, ingest_pb2.ListFileTypesRequest(), c), OWN),
    _rpc_case("IngestService", "GetUsage", None, lambda w, c, i: rpc(
        w.ingest.GetUsage, ingest_pb2.GetUsageRequest(), c), OWN),
    _rpc_case("IngestService", "CreateCollection", None, grpc_create_collection, OWN, writes=True),
    _rpc_case("IngestService", "GetCollection", "collection_id", lambda w, c, i: rpc(
        w.ingest.GetCollection, ingest_pb2.GetCollectionRequest(collection_id=i.collection_id), c), DENY),
    _rpc_case("IngestService", "ListCollections", "collection_ids", lambda w, c, i: rpc(
        w.ingest.ListCollections, ingest_pb2.ListCollectionsRequest(collection_ids=[i.personal_collection_id]), c),
        OWN,
        check=check_listed_collections),
    _rpc_case("IngestService", "UpdateCollection", "collection_id", lambda w, c, i: rpc(
        w.ingest.UpdateCollection, ingest_pb2.UpdateCollectionRequest(collection_id=i.collection_id,
                                                                      name="renamed by B"), c), DENY, writes=True),
    _rpc_case("IngestService", "DeleteCollection", "collection_id", lambda w, c, i: rpc(
        w.ingest.DeleteCollection, ingest_pb2.DeleteCollectionRequest(collection_id=i.collection_id), c), DENY,
        writes=True),
    _rpc_case("IngestService", "ListCollectionMembers", "collection_id", lambda w, c, i: rpc(
        w.ingest.ListCollectionMembers, ingest_pb2.ListCollectionMembersRequest(collection_id=i.collection_id), c),
        DENY),
    _rpc_case("IngestService", "SetCollectionMember", "collection_id", lambda w, c, i: rpc(
        w.ingest.SetCollectionMember, ingest_pb2.SetCollectionMemberRequest(
            collection_id=i.collection_id, user_id=c.user_id, role=ingest_pb2.COLLECTION_ROLE_OWNER), c), DENY,
        writes=True),
    _rpc_case("IngestService", "DeleteCollectionMember", "collection_id", lambda w, c, i: rpc(
        w.ingest.DeleteCollectionMember, ingest_pb2.DeleteCollectionMemberRequest(
            collection_id=i.collection_id, user_id=w.a.user_id), c), DENY, writes=True),
    # gRPC: ChatService
    _rpc_case("ChatService", "Chat", None, grpc_chat(None), OWN, writes=True, check=check_chat_turn),
    _rpc_case("ChatService", "Chat", "conversation_id", grpc_chat("conversation_id"), DENY, writes=True),
    _rpc_case("ChatService", "Chat", "document_ids", grpc_chat("document_ids"), OWN, writes=True,
              check=check_chat_turn),
    _rpc_case("ChatService", "Chat", "collection_ids", grpc_chat("collection_ids"), OWN, writes=True,
              check=check_chat_turn),
    _rpc_case("ChatService", "StreamChat", None, grpc_chat(None, stream=True), OWN, writes=True,
              check=check_chat_turn),
    _rpc_case("ChatService", "StreamChat", "conversation_id", grpc_chat("conversation_id", stream=True), DENY,
              writes=True),
    _rpc_case("ChatService", "StreamChat", "document_ids", grpc_chat("document_ids", stream=True), OWN, writes=True,
              check=check_chat_turn),
    _rpc_case("ChatService", "StreamChat", "collection_ids", grpc_chat("collection_ids", stream=True), OWN,
              writes=True, check=check_chat_turn),
    _rpc_case("ChatService", "ListConversations", "page_token", grpc_list_conversations, OWN,
              check=check_listed_conversations),
    _rpc_case("ChatService", "GetConversation", "conversation_id", lambda w, c, i: rpc(
        w.chat.GetConversation, chat_pb2.GetConversationRequest(conversation_id=i.conversation_id), c), DENY),
    _rpc_case("ChatService", "DeleteConversation", "conversation_id", lambda w, c, i: rpc(
        w.chat.DeleteConversation, chat_pb2.DeleteConversationRequest(conversation_id=i.conversation_id), c), DENY,
        writes=True),
    _rpc_case("ChatService", "ReindexMemory", None, lambda w, c, i: rpc(
        w.chat.ReindexMemory, chat_pb2.ReindexMemoryRequest(), c), OP, writes=True),
    # gRPC: RetrievalService (the write RPCs last: see `ordered`)
    _rpc_case("RetrievalService", "Search", None, grpc_search(None), OWN, check=check_search),
    _rpc_case("RetrievalService", "Search", "document_ids", grpc_search("document_ids"), OWN, check=check_search),
    _rpc_case("RetrievalService", "Search", "conversation_id", grpc_search("conversation_id"), OWN,
              check=check_search),
    _rpc_case("RetrievalService", "Search", "exclude_conversation_id", grpc_search("exclude_conversation_id"), OWN,
              check=check_search),
    _rpc_case("RetrievalService", "UpsertChunks", "document_id", grpc_upsert_chunks("document_id"), OWN, writes=True),
    _rpc_case("RetrievalService", "UpsertChunks", "collection_id", grpc_upsert_chunks("collection_id"), DENY,
              writes=True),
    _rpc_case("RetrievalService", "DeleteDocumentChunks", "document_id", lambda w, c, i: rpc(
        w.retrieval.DeleteDocumentChunks, retrieval_pb2.DeleteDocumentChunksRequest(document_id=i.document_id), c),
        OWN, writes=True),
    # the caller has no chunks of that version: FAILED_PRECONDITION (VERSION_NOT_INDEXED), as for any document id
    _rpc_case("RetrievalService", "ActivateDocumentVersion", "document_id", grpc_activate_version, OWN,
              writes=True, refusals=frozenset({grpc.StatusCode.FAILED_PRECONDITION})),
    _rpc_case("RetrievalService", "UpsertChatTurn", "turn_id", grpc_upsert_chat_turn("turn_id"), OWN, writes=True),
    _rpc_case("RetrievalService", "UpsertChatTurn", "conversation_id", grpc_upsert_chat_turn("conversation_id"), OWN,
              writes=True),
    _rpc_case("RetrievalService", "DeleteConversationMemory", "conversation_id", lambda w, c, i: rpc(
        w.retrieval.DeleteConversationMemory,
        retrieval_pb2.DeleteConversationMemoryRequest(conversation_id=i.conversation_id), c), OWN, writes=True),
    _rpc_case("RetrievalService", "ResetIndex", None, lambda w, c, i: rpc(
        w.retrieval.ResetIndex, retrieval_pb2.ResetIndexRequest(), c), OP, writes=True),
)

RETRIEVAL_WRITES = {f"/docent.v1.RetrievalService/{name}" for name in (
    "UpsertChunks", "DeleteDocumentChunks", "ActivateDocumentVersion", "UpsertChatTurn", "DeleteConversationMemory",
    "ResetIndex")}

# Known isolation bugs: (target, field, attacker) -> what is wrong. Strict: fixing one makes its case pass, and
# the entry must then go.
KNOWN_BUGS: dict[tuple[str, str | None, str], str] = {}


def applies(case: Case, attacker: Attacker) -> bool:
    if case.public and not attacker.authenticated:
        return False  # a public route takes no credentials
    if attacker.varies_ids_only and case.field is None:
        return False
    if attacker.victims_own and case.writes and not read_key_refuses(case):
        # A's own read-only key may chat in A's conversations (tests/test_api_keys.py): that changes A's data
        # the other cases compare, and is no attack
        return False
    return True


def ordered() -> list[Any]:
    """Every (case, attacker), the ones that can destroy A's vectors last (a revoked token is still A's, and the
    retrieval service may not refuse it), so that the reads before them see A's data whole."""
    def rank(pair: tuple[Case, Attacker]) -> int:
        case, attacker = pair
        destructive = case.target in RETRIEVAL_WRITES
        return 2 if destructive and not attacker.authenticated else 1 if destructive else 0

    pairs = [(case, attacker) for case in CASES for attacker in ATTACKERS if applies(case, attacker)]
    params = []
    for case, attacker in sorted(pairs, key=rank):
        bug = KNOWN_BUGS.get((case.target, case.field, attacker.name))
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        params.append(pytest.param(case, attacker, id=f"{case.name}-{attacker.name}", marks=marks))
    return params


# the stack and the victim's data, once ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def up():
    up = start_up({"DOCENT_JWT_SECRET": TEST_SECRET})
    try:
        up.wait_for("Docent is up", 180)
        up.track_descendants()
        yield up
    finally:
        up.stop()
        shutil.rmtree(up.data_dir, ignore_errors=True)


async def signup(http: httpx.AsyncClient) -> Tenant:
    email = f"tenant-{uuid.uuid4().hex[:10]}@example.com"
    reply = await http.post("/api/auth/signup", json={"email": email, "username": "tenant", "password": PASSWORD})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    return Tenant(body["user"]["id"], email, body["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        await asyncio.sleep(0.2)


def stamp(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@pytest.fixture(scope="module")
async def world(up) -> AsyncIterator[World]:
    base = f"http://127.0.0.1:{up.ports['gateway']}"
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{up.ports[name]}")
                for name in ("ingest", "chat", "retrieval")}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        a, b, c = await asyncio.gather(signup(http), signup(http), signup(http))
        # A's collections, where the build has them: one A creates and shares with C (a viewer), and A's personal one
        created = await http.post("/api/collections/", headers=bearer(a.token), json={"name": A_COLLECTION})
        if created.status_code == 201:
            a.collection_id = created.json()["id"]
            listed = (await http.get("/api/collections/", headers=bearer(a.token))).json()["collections"]
            a.personal_collection_id = next(item["id"] for item in listed if item["personal"])
            shared = await http.post(f"/api/collections/{a.collection_id}/members", headers=bearer(a.token),
                                     json={"email": c.email, "role": "viewer"})
            assert shared.status_code == 200, shared.text

        async def upload(filename: str, text: str, collection_id: str = "") -> dict:
            """A uploads and follows it over SSE to the end."""
            reply = await http.post("/api/upload/", headers=bearer(a.token),
                                    params={"collection_id": collection_id} if collection_id else {},
                                    files={"file": (filename, text.encode(), "text/plain")})
            assert reply.status_code == 202, reply.text
            async with http.stream("GET", f"/api/upload/{reply.json()['id']}/events",
                                   headers=bearer(a.token)) as events:
                body = (await events.aread()).decode()
            assert "event: done" in body and '"status":"completed"' in body, body
            return reply.json()

        # A's document, in the personal collection; and one in the shared collection
        document, *rest_ = await asyncio.gather(upload(A_FILENAME, A_TEXT), *(
            [upload(SHARED_FILENAME, SHARED_TEXT, a.collection_id)] if a.collection_id else []))
        a.document_id, a.document_created = document["id"], stamp(document["uploaded_at"])
        a.shared_document_id = rest_[0]["id"] if rest_ else ""
        status = (await http.get(f"/api/upload/{a.document_id}/status", headers=bearer(a.token))).json()
        a.chunk_count = status["progress"]["chunks_total"] or status["progress"]["chunks_done"]
        # A chats once: a conversation, and a turn that becomes chat memory
        reply = await http.post("/api/chat/", headers=bearer(a.token), json={"query": A_QUESTION})
        assert reply.status_code == 200, reply.text
        turn = reply.json()
        assert any(source["document_id"] == a.document_id for source in turn["sources"]), turn
        a.conversation_id, a.turn_id = turn["conversation_id"], turn["turn_id"]
        conversation = (await http.get(f"/api/chat/conversations/{a.conversation_id}",
                                       headers=bearer(a.token))).json()
        a.conversation_updated = stamp(conversation["updated_at"])
        # an API key of A's, where the build has them
        key = await http.post("/api/keys/", headers=bearer(a.token), json={"name": "a-key", "access": "read"})
        if key.status_code == 201:
            a.key_id = key.json()["id"]
        # a second session of A's, logged out
        signed_in = await http.post("/api/auth/signin", json={"email": a.email, "password": PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        revoked = signed_in.json()["access_token"]
        assert (await http.post("/api/auth/logout", headers=bearer(revoked))).status_code == 200

        world = World(up, http, ingest_pb2_grpc.IngestServiceStub(channels["ingest"]),
                      chat_pb2_grpc.ChatServiceStub(channels["chat"]),
                      retrieval_pb2_grpc.RetrievalServiceStub(channels["retrieval"]), a, b,
                      c if a.collection_id else None, revoked, [], "")
        a_creds = Credentials(a.user_id, a.token)
        probe = await world.retrieval.Search(retrieval_pb2.SearchRequest(
            query="probe", return_query_embedding=True), metadata=a_creds.metadata(), timeout=GRPC_TIMEOUT)
        world.embedding, world.embedding_model = list(probe.query_embedding), probe.query_embedding_model

        async def memory_indexed() -> bool:
            return any(turn_id == a.turn_id for _, turn_id, *_ in (await snapshot(world))["memory"])

        async def revocation_seen() -> bool:
            revoked_creds = Credentials(a.user_id, revoked)
            codes = [(await rpc(world.ingest.ListFileTypes, ingest_pb2.ListFileTypesRequest(), revoked_creds)).status,
                     (await rpc(world.chat.ListConversations, chat_pb2.ListConversationsRequest(),
                                revoked_creds)).status]
            return all(code == grpc.StatusCode.UNAUTHENTICATED for code in codes)

        await asyncio.gather(until(memory_indexed, "A's turn in chat memory"),
                             until(revocation_seen, "the logout seen by ingest and chat", 30))
        # the key attackers' keys, made before anything compares A's data (they are A's data too)
        for attacker in ATTACKERS:
            if attacker.requires and not getattr(a, attacker.requires):
                continue
            made = attacker.credentials(world)
            if inspect.isawaitable(made):
                await made
        try:
            yield world
        finally:
            await asyncio.gather(*(channel.close() for channel in channels.values()))


async def snapshot(world: World) -> dict[str, Any]:
    """A's data as A sees it: the document, the conversation, A's vectors (document chunks, chat memory), and
    A's API keys and collections where the build has them."""
    a, creds = world.a, Credentials(world.a.user_id, world.a.token)

    async def get(path: str) -> tuple[int, Any]:
        reply = await world.http.get(path, headers=bearer(a.token))
        return reply.status_code, reply.json()

    async def search(**fields: Any) -> Any:
        return await world.retrieval.Search(retrieval_pb2.SearchRequest(
            query=A_QUESTION, top_k=100, mode=retrieval_pb2.SEARCH_MODE_DENSE, **fields),
            metadata=creds.metadata(), timeout=GRPC_TIMEOUT)

    async def nothing() -> None:
        return None

    def state_of(reply: tuple[int, Any] | None) -> tuple[Any, ...] | None:
        if reply is None:
            return None
        status, body = reply
        return (status, *(body.get(name) for name in ("processing_status", "filename", "version", "pending_version")))

    (document, conversation, chunks, memory, keys, listed, members, shared_document) = await asyncio.gather(
        get(f"/api/upload/{a.document_id}"), get(f"/api/chat/conversations/{a.conversation_id}"),
        search(document_ids=[a.document_id], weights=retrieval_pb2.SourceWeights(documents=1.0, chat_history=0.0),
               min_score_documents=-1.0),
        search(conversation_id=a.conversation_id, min_score_chat_history=-1.0,
               weights=retrieval_pb2.SourceWeights(documents=0.0, chat_history=1.0)),
        get("/api/keys/") if a.key_id else nothing(),
        get("/api/collections/") if a.collection_id else nothing(),
        get(f"/api/collections/{a.collection_id}/members") if a.collection_id else nothing(),
        get(f"/api/upload/{a.shared_document_id}") if a.shared_document_id else nothing())

    def items(reply: tuple[int, Any] | None, name: str) -> tuple[int, list[str]] | None:
        if reply is None:
            return None
        # when a key was last used changes with its use, as a key attacker's own use shows
        return reply[0], sorted(json.dumps({key: value for key, value in item.items() if key != "last_used_at"},
                                           sort_keys=True) for item in reply[1].get(name, []))

    return {
        "keys": items(keys, "keys"),
        "collections": items(listed, "collections"),
        "members": items(members, "members"),
        "shared document": state_of(shared_document),
        "document": state_of(document),
        "conversation": (conversation[0], [turn["turn_id"] for turn in conversation[1].get("turns") or []]),
        "chunks": sorted((r.document.document_id, r.document.chunk_index, r.document.filename, r.text)
                         for r in chunks.results),
        "memory": sorted((r.chat_turn.conversation_id, r.chat_turn.turn_id, r.chat_turn.user_message,
                          r.chat_turn.assistant_message) for r in memory.results),
    }


# the tests ----------------------------------------------------------------------------------------------------

async def test_the_victim_has_what_the_attacks_aim_at(world) -> None:
    state = await snapshot(world)
    assert state["document"][:3] == (200, "completed", A_FILENAME)
    assert state["shared document"] is None or state["shared document"][:3] == (200, "completed", SHARED_FILENAME)
    assert state["conversation"] == (200, [world.a.turn_id])
    if world.a.collection_id:
        assert world.a.personal_collection_id and A_COLLECTION in str(state["collections"])
        assert world.c is not None and world.c.user_id in str(state["members"])
        # what C may see of A's: the shared collection and its document, in C's listing and C's answers
        c = viewer_c(world)
        listed = (await world.http.get("/api/upload/", headers=c.http_headers())).json()
        assert [document["id"] for document in listed] == [world.a.shared_document_id]
        answer = (await world.http.post("/api/chat/", headers=c.http_headers(), json={
            "query": "When does the team count zebrafish?", "explain": True})).json()
        assert {source["document_id"] for source in answer["sources"]} == {world.a.shared_document_id}
    assert len(state["chunks"]) == world.a.chunk_count >= 1
    assert [turn_id for _, turn_id, *_ in state["memory"]] == [world.a.turn_id]
    assert A_CHAT_MARKER in state["memory"][0][2]


REST_SERVER_ERROR = range(500, 600)
GRPC_REFUSED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}


def expected(case: Case, attacker: Attacker, is_rest: bool) -> Expectation:
    """The answers allowed, and whether a success is among them (with only the caller's own data)."""
    if attacker.expect is not None and (special := attacker.expect(case, is_rest)) is not None:
        return special
    if not attacker.authenticated:
        return ({401} if is_rest else {grpc.StatusCode.UNAUTHENTICATED}), False
    if case.foreign is Foreign.OPERATOR:
        return ({403} if is_rest else {grpc.StatusCode.PERMISSION_DENIED}), False
    if is_rest:
        refused: set[Any] = {401, 403, 404} | ({400, 422} if attacker.malformed else set())
    else:
        refused = set(GRPC_REFUSED)
    refused |= case.refusals
    return refused, case.foreign is Foreign.OWN_ONLY


@pytest.mark.parametrize(("case", "attacker"), ordered())
async def test_tenancy(world, case: Case, attacker: Attacker) -> None:
    if case.target not in endpoints():
        pytest.skip(f"{case.target} is not in this build")
    if case.requires and not getattr(world.a, case.requires):
        pytest.skip(f"{case.field} is not in this build")
    if attacker.requires and not getattr(world.a, attacker.requires):
        pytest.skip(f"{attacker.name}: not in this build")
    creds, ids = attacker.credentials(world), attacker.ids(world)
    if inspect.isawaitable(creds):
        creds = await creds
    before = None
    if case.writes:
        before = world.state = world.state or await snapshot(world)
    try:
        await attempt(world, case, attacker, creds, ids)
        if before is not None:
            assert await snapshot(world) == before, "A's data changed"
    except BaseException:
        if before is not None:
            await restore_vectors(world, before)
            world.state = None
        raise


async def attempt(world: World, case: Case, attacker: Attacker, creds: Credentials, ids: Ids) -> None:
    outcome = await case.perform(world, creds, ids)

    is_rest = isinstance(outcome.status, int)
    assert not (is_rest and outcome.status in REST_SERVER_ERROR), (outcome.status, outcome.text[:500])
    assert outcome.status not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), outcome.text[:500]
    allowed, success_allowed = expected(case, attacker, is_rest)
    assert outcome.status in allowed or (success_allowed and outcome.ok), (outcome.status, outcome.text[:500])
    # nothing of A's in the answer; a refusal may repeat the ids the caller sent
    secrets = {name: value for name, value in world.secrets().items() if name not in creds.sees}
    if not outcome.ok:
        secrets = {name: value for name, value in secrets.items() if value not in ids.values()}
    for name, value in secrets.items():
        assert value not in outcome.text, f"{name} in the answer: {outcome.text[:500]}"
    if outcome.ok and case.check is not None and not attacker.victims_own:
        await case.check(world, creds, ids, outcome)


async def restore_vectors(world: World, before: dict[str, Any]) -> None:
    """After an attack that got through to A's vectors (a known bug), A writes them back as they were, so that
    the cases after it still aim at A's data, whatever subset of them runs."""
    now = await snapshot(world)
    if now == before:
        return
    a = Credentials(world.a.user_id, world.a.token)
    if now["chunks"] != before["chunks"]:
        chunks = [retrieval_pb2.Chunk(chunk_index=index, text=text, page_start=1, page_end=1,
                                      embedding=world.embedding, token_count=len(text.split()))
                  for _, index, _, text in before["chunks"]]
        await world.retrieval.DeleteDocumentChunks(retrieval_pb2.DeleteDocumentChunksRequest(
            document_id=world.a.document_id), metadata=a.metadata(), timeout=GRPC_TIMEOUT)
        await world.retrieval.UpsertChunks(retrieval_pb2.UpsertChunksRequest(
            document_id=world.a.document_id, filename=A_FILENAME, chunks=chunks,
            embedding_model=world.embedding_model), metadata=a.metadata(), timeout=GRPC_TIMEOUT)
    if now["memory"] != before["memory"]:
        for conversation_id, turn_id, user_message, assistant_message in before["memory"]:
            await world.retrieval.UpsertChatTurn(retrieval_pb2.UpsertChatTurnRequest(
                turn_id=turn_id, conversation_id=conversation_id, user_message=user_message,
                assistant_message=assistant_message, embedding=world.embedding,
                embedding_model=world.embedding_model), metadata=a.metadata(), timeout=GRPC_TIMEOUT)


# every endpoint has its case ----------------------------------------------------------------------------------

# REST routes without a tenancy case, and why
NOT_TENANT_DATA = {
    "GET /health": "liveness, no data",
    "GET /ready": "readiness of the upstreams, no user data",
    "GET /metrics": "Prometheus counters, no user data",
    "GET /openapi.json": "the API description",
    "GET /docs": "Swagger UI page",
    "MOUNT /docs-assets": "Swagger UI static files",
    "MOUNT /": "the web UI's static files",
}


def app_routes() -> set[str]:
    from services.gateway.app import create_app

    def walk(routes: list[Any]) -> Any:
        for route in routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if callable(contexts):  # an included router (FastAPI >= 0.16x): its routes with their full paths
                yield from contexts()
            else:
                yield route

    found = set()
    for route in walk(create_app(make_settings(), TEST_SECRET).routes):
        if isinstance(route, Mount):
            found.add(f"MOUNT {route.path or '/'}")
        elif isinstance(route, APIRoute | Route) or getattr(route, "methods", None):
            found.update(f"{method} {route.path}" for method in route.methods or () if method != "HEAD")
        else:
            found.add(f"? {getattr(route, 'path', route)}")
    return found


def grpc_methods() -> set[str]:
    found = set()
    for module_info in pkgutil.iter_modules(docent.v1.__path__):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"docent.v1.{module_info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found.update(f"/{service.full_name}/{method.name}" for method in service.methods)
    return found


@functools.cache
def endpoints() -> frozenset[str]:
    return frozenset(app_routes() | grpc_methods())


def test_every_rest_route_and_grpc_method_has_a_tenancy_case() -> None:
    covered = {case.target for case in CASES}
    routes, methods = app_routes(), grpc_methods()
    assert len(methods) >= 19 and len(routes) >= 16
    missing = sorted(((routes - NOT_TENANT_DATA.keys()) | methods) - covered)
    assert not missing, f"endpoints without a tenancy case in CASES (tests/test_tenancy.py): {missing}"
    # (a case for an endpoint this build does not have is skipped: endpoints land in several steps)
    stale = sorted(NOT_TENANT_DATA.keys() - routes)
    assert not stale, f"allow-list entries for routes that no longer exist: {stale}"


def test_every_case_meets_every_attacker_that_applies() -> None:
    for case in CASES:
        kinds = {attacker.name for attacker in ATTACKERS if applies(case, attacker)}
        assert "other_user" in kinds, case.name
        if not case.public:
            assert {"revoked_token", "expired_token"} <= kinds, case.name
        if case.field is not None:
            assert {"guessed_id", "malformed_id"} <= kinds, case.name
    assert all(key[2] in {a.name for a in ATTACKERS} and any((c.target, c.field) == key[:2] for c in CASES)
               for key in KNOWN_BUGS)


async def test_a_query_token_never_overrides_the_header(world) -> None:
    """`?access_token=` is for EventSource, which sends no header: with one, the header's user is the caller."""
    b = attacker_b(world)
    for method, path, kwargs in (("GET", f"/api/upload/{world.a.document_id}/events", {}),
                                 ("POST", "/api/chat/stream",
                                  {"json": {"query": "hi", "conversation_id": world.a.conversation_id}})):
        outcome = await rest_sse(world, b, method, path, params={"access_token": world.a.token}, **kwargs)
        assert outcome.status == 404, (method, path, outcome.status, outcome.text[:300])
