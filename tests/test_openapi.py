"""The gateway's OpenAPI document is fit for client generators: stable operation ids, one error schema on
every error response, `date-time` timestamps, typed SSE events, examples that match their schemas, and the
`reason` of a 422. The routes are read from the app, so a new endpoint without its error docs fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator
from starlette.responses import StreamingResponse

from services.gateway.accounts import current_caller
from services.gateway.app import create_app
from tests.conftest import TEST_SECRET, make_settings

ERROR = "#/components/schemas/ErrorOut"
VALIDATION_ERROR = "#/components/schemas/ValidationErrorOut"
# the one error status whose body is not an error: /ready's 503 is the readiness report itself
NOT_ERROR_BODIES = {("/ready", "get", "503"): "#/components/schemas/ReadyOut"}
# what client generators have been told; renaming one breaks the generated clients
OPERATION_IDS = {
    ("post", "/api/auth/signup"): "signUp",
    ("post", "/api/auth/signin"): "signIn",
    ("get", "/api/auth/me"): "getCurrentUser",
    ("post", "/api/auth/logout"): "logout",
    ("post", "/api/upload/"): "uploadDocument",
    ("get", "/api/upload/"): "listDocuments",
    ("get", "/api/upload/{document_id}"): "getDocument",
    ("get", "/api/upload/{document_id}/status"): "getDocumentStatus",
    ("get", "/api/upload/{document_id}/events"): "streamDocumentEvents",
    ("delete", "/api/upload/{document_id}"): "deleteDocument",
    ("put", "/api/upload/{document_id}"): "replaceDocument",
    ("get", "/api/file-types"): "listFileTypes",
    ("post", "/api/chat/"): "chat",
    ("post", "/api/chat/stream"): "streamChat",
    ("get", "/api/chat/conversations"): "listConversations",
    ("get", "/api/chat/conversations/{conversation_id}"): "getConversation",
    ("delete", "/api/chat/conversations/{conversation_id}"): "deleteConversation",
    ("get", "/health"): "getHealth",
    ("get", "/ready"): "getReadiness",
}


@pytest.fixture(scope="module")
def app():
    return create_app(make_settings(), TEST_SECRET)


@pytest.fixture(scope="module")
def doc(app) -> dict[str, Any]:
    return app.openapi()


def api_routes(app: FastAPI) -> Iterator[tuple[Any, str]]:
    """Every (route, method) the app serves and documents, the included routers' too (FastAPI >= 0.160 keeps
    them as `_IncludedRouter`s in app.routes; iter_route_contexts flattens them with their prefixes)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        contexts: Any = app.routes
    else:
        contexts = list(iter_route_contexts(app.routes))
    for context in contexts:
        route = getattr(context, "original_route", context)
        if isinstance(route, APIRoute) and context.include_in_schema:
            for method in sorted(context.methods):
                yield context, method.lower()


def operation(doc: dict[str, Any], route: Any, method: str) -> dict[str, Any]:
    assert route.path_format in doc["paths"], f"{route.path_format} is missing from the document"
    return doc["paths"][route.path_format][method]


def json_ref(response: dict[str, Any]) -> str | None:
    return response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")


def uses(route: Any, dependency: Any) -> bool:
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if dependant.call is dependency:
            return True
        pending.extend(dependant.dependencies)
    return False


def test_every_route_is_documented_with_a_readable_unique_operation_id(app, doc) -> None:
    ids = [operation(doc, route, method).get("operationId", "") for route, method in api_routes(app)]
    assert len(ids) >= len(OPERATION_IDS)
    for operation_id in ids:
        assert re.fullmatch(r"[a-z][A-Za-z0-9]+", operation_id), operation_id
    assert len(ids) == len(set(ids)), sorted(ids)
    documented = {(method, path): op["operationId"] for path, ops in doc["paths"].items() for method, op in ops.items()}
    assert {key: documented.get(key) for key in OPERATION_IDS} == OPERATION_IDS
    # generated names (FastAPI's `upload_api_upload__post`) leave no trace, not even in a body's schema name
    assert not [name for name in doc["components"]["schemas"] if "__" in name or name.endswith(("_post", "_get"))]


def test_every_error_response_has_the_error_schema(app, doc) -> None:
    for route, method in api_routes(app):
        op = operation(doc, route, method)
        where = f"{method.upper()} {route.path_format}"
        errors = {status: response for status, response in op["responses"].items() if not status.startswith("2")}
        assert "500" in errors, f"{where} ({op['operationId']}): no documented 500"
        for status, response in errors.items():
            expected = NOT_ERROR_BODIES.get((route.path_format, method, status))
            if expected is None:
                expected = VALIDATION_ERROR if status == "422" else ERROR
            assert json_ref(response) == expected, f"{where} {status}: {response}"
            assert response.get("description"), f"{where} {status} has no description"
        if uses(route, current_caller):
            assert "401" in errors, f"{where} is authenticated but documents no 401"
        if route.dependant.body_params or route.dependant.query_params or route.dependant.path_params:
            assert "422" in errors, f"{where} validates its request but documents no 422"
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's 422 without `reason`


def test_a_new_route_without_error_docs_is_caught_and_gets_a_readable_id() -> None:
    app = create_app(make_settings(), TEST_SECRET)
    app.openapi()

    @app.get("/api/things/{thing_id}")
    async def get_thing_by_id(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    doc = app.openapi()  # regenerated: the routes changed
    op = doc["paths"]["/api/things/{thing_id}"]["get"]
    assert op["operationId"] == "getThingById"
    with pytest.raises(AssertionError, match=r"getThingById|/api/things"):
        test_every_error_response_has_the_error_schema(app, doc)


def test_the_statuses_the_gateway_maps_to_are_documented(doc) -> None:
    statuses = {status for ops in doc["paths"].values() for op in ops.values() for status in op["responses"]}
    assert {"400", "401", "404", "409", "413", "415", "422", "429", "500", "503", "504"} <= statuses
    upload = doc["paths"]["/api/upload/"]["post"]["responses"]
    assert {"413", "415"} <= set(upload)
    assert "429" in doc["paths"]["/api/auth/signin"]["post"]["responses"]


def test_error_schemas(doc) -> None:
    schemas = doc["components"]["schemas"]
    error = schemas["ErrorOut"]
    assert set(error["required"]) == {"detail", "reason"} and error["properties"]["detail"]["type"] == "string"
    validation = schemas["ValidationErrorOut"]
    assert set(validation["required"]) == {"detail", "reason"}
    assert validation["properties"]["reason"]["const"] == "VALIDATION_ERROR"
    assert validation["properties"]["detail"]["type"] == "array"


def string_branches(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if schema.get("type") == "string":
        yield schema
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from string_branches(branch)


def test_timestamps_are_date_time(doc) -> None:
    seen = []
    for name, schema in doc["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if field.endswith("_at") or field in ("timestamp", "time"):
                branches = list(string_branches(prop))
                assert branches, f"{name}.{field} is not a string"
                assert all(branch.get("format") == "date-time" for branch in branches), f"{name}.{field}: {prop}"
                seen.append(f"{name}.{field}")
    assert {"DocumentOut.uploaded_at", "DocumentOut.indexed_at", "ChatOut.created_at", "ConversationOut.updated_at",
            "UserOut.created_at", "ContextChatTurn.created_at"} <= set(seen)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_reference_resolves_and_nested_objects_are_typed(doc) -> None:
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    context = schemas["ContextItem"]["properties"]
    assert {ref for ref in refs(context["document"])} == {"#/components/schemas/ContextDocument"}
    assert {ref for ref in refs(context["chat_turn"])} == {"#/components/schemas/ContextChatTurn"}
    assert set(refs(schemas["ChatOut"]["properties"]["timings"])) == {"#/components/schemas/Timings"}


def test_sse_routes_name_their_events_and_payloads(app, doc) -> None:
    streams = [(route, method) for route, method in api_routes(app) if route.response_class is StreamingResponse]
    assert {route.path_format for route, _ in streams} == {"/api/upload/{document_id}/events", "/api/chat/stream"}
    for route, method in streams:
        op = operation(doc, route, method)
        media = op["responses"]["200"]["content"]["text/event-stream"]
        events = media["x-sse-events"]
        assert "error" in events and events["error"]["$ref"] == "#/components/schemas/ErrorEvent"
        assert {event["$ref"] for event in events.values()} == {branch["$ref"] for branch in media["schema"]["oneOf"]}
        for name, event in events.items():
            assert f"`{name}`" in op["description"], f"{route.path_format}: event {name} is not described"
            assert event["$ref"].rsplit("/", 1)[1] in op["description"]
    chat_events = doc["paths"]["/api/chat/stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert set(chat_events["x-sse-events"]) == {"conversation", "token", "sources", "done", "error"}


def test_examples_match_their_schemas(doc) -> None:
    schemas = doc["components"]["schemas"]
    with_examples = [name for name, schema in schemas.items() if schema.get("examples")]
    assert {"ChatIn", "ChatOut", "DocumentOut", "DocumentStatusOut", "SignupRequest", "SigninRequest", "TokenOut",
            "ErrorOut", "ValidationErrorOut", "ConversationOut"} <= set(with_examples)
    for name in with_examples:
        validator = Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})
        for example in schemas[name]["examples"]:
            errors = [error.message for error in validator.iter_errors(example)]
            assert not errors, f"{name}: {errors}"


async def test_a_validation_error_keeps_fastapis_detail_and_adds_the_reason(app) -> None:
    app.state.docent = object()  # signup's body is validated before the route would touch the state
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        reply = await client.post("/api/auth/signup", json={"email": "ada@example.com", "password": "short"})
    assert reply.status_code == 422
    assert list(reply.json()) == ["detail", "reason"] and reply.json()["reason"] == "VALIDATION_ERROR"
    detail = reply.json()["detail"]
    assert [(issue["loc"], issue["type"]) for issue in detail] == [(["body", "username"], "missing"),
                                                                  (["body", "password"], "string_too_short")]
    assert set(detail[1]) == {"type", "loc", "msg", "input", "ctx"}  # FastAPI's items, unchanged
