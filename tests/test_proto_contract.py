"""The gRPC contract documents itself: every element of protos/docent/v1 carries a leading comment.

`grpcurl describe` and generated client docs show a proto's leading comments and nothing else, so
a service, RPC, message, field, oneof, enum or enum value without one is a bare name to a client.
The protos are compiled here with grpc_tools.protoc (the compiler `make proto` uses, offline) into
a FileDescriptorSet with source info, and every element's location is checked for a comment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_FILES = sorted((PROTO_ROOT / "docent" / "v1").glob("*.proto"))

# field numbers of the descriptor messages, as source-code-info paths use them (descriptor.proto)
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

Element = tuple[str, str, tuple[int, ...]]  # (kind, full name, source-code-info path)


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    assert PROTO_FILES, f"no .proto files under {PROTO_ROOT}"
    out = tmp_path_factory.mktemp("protoc") / "docent.binpb"
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    # a subprocess: protoc's messages go to its stderr, which the assertion shows
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", "--include_source_info",
         f"--descriptor_set_out={out}", *(str(path.relative_to(PROTO_ROOT)) for path in PROTO_FILES)],
        cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"protoc failed:\n{result.stdout}{result.stderr}"
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(descriptors.file) == len(PROTO_FILES)
    return descriptors


def _message_elements(message: descriptor_pb2.DescriptorProto, prefix: str,
                      path: tuple[int, ...]) -> Iterator[Element]:
    name = f"{prefix}.{message.name}"
    yield "message", name, path
    for index, field in enumerate(message.field):
        yield "field", f"{name}.{field.name}", (*path, MESSAGE_FIELD, index)
    for index, oneof in enumerate(message.oneof_decl):
        if any(field.HasField("oneof_index") and field.oneof_index == index and field.proto3_optional
               for field in message.field):
            continue  # the synthetic oneof of a proto3 `optional` field: its field carries the comment
        yield "oneof", f"{name}.{oneof.name}", (*path, MESSAGE_ONEOF, index)
    for index, nested in enumerate(message.nested_type):
        if nested.options.map_entry:
            continue  # generated for a map field, which carries the comment
        yield from _message_elements(nested, name, (*path, MESSAGE_NESTED, index))
    for index, enum in enumerate(message.enum_type):
        yield from _enum_elements(enum, name, (*path, MESSAGE_ENUM, index))


def _enum_elements(enum: descriptor_pb2.EnumDescriptorProto, prefix: str,
                   path: tuple[int, ...]) -> Iterator[Element]:
    name = f"{prefix}.{enum.name}"
    yield "enum", name, path
    for index, value in enumerate(enum.value):
        yield "enum value", f"{name}.{value.name}", (*path, ENUM_VALUE, index)


def _file_elements(proto: descriptor_pb2.FileDescriptorProto) -> Iterator[Element]:
    package = proto.package
    for index, service in enumerate(proto.service):
        name = f"{package}.{service.name}"
        yield "service", name, (FILE_SERVICE, index)
        for method_index, method in enumerate(service.method):
            yield "method", f"{name}.{method.name}", (FILE_SERVICE, index, SERVICE_METHOD, method_index)
    for index, message in enumerate(proto.message_type):
        yield from _message_elements(message, package, (FILE_MESSAGE, index))
    for index, enum in enumerate(proto.enum_type):
        yield from _enum_elements(enum, package, (FILE_ENUM, index))


def _elements(descriptors: descriptor_pb2.FileDescriptorSet) -> list[tuple[str, str, str, str]]:
    """(file, kind, full name, leading comment) of every element of every file."""
    found = []
    for proto in descriptors.file:
        comments = {tuple(location.path): location.leading_comments for location in proto.source_code_info.location}
        assert comments, f"{proto.name} has no source info: protoc ran without --include_source_info?"
        for kind, name, path in _file_elements(proto):
            assert path in comments, f"{proto.name}: no source location for {kind} {name}"
            found.append((proto.name, kind, name, comments[path].strip()))
    return found


def test_every_contract_element_has_a_leading_comment(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    elements = _elements(descriptor_set)
    del descriptor_set  # a failure's traceback need not print the whole set
    kinds = Counter(kind for _, kind, _, _ in elements)
    # the walk found the contract, so an empty walk cannot pass: each kind is in the protos today
    for kind in ("service", "method", "message", "field", "oneof", "enum", "enum value"):
        assert kinds[kind] > 0, f"no {kind} found in {[path.name for path in PROTO_FILES]}: {dict(kinds)}"
    assert kinds["service"] == 3 and kinds["method"] >= 19 and kinds["field"] >= 150, dict(kinds)
    bare = [f"{file}: {kind} {name}" for file, kind, name, comment in elements if not comment]
    assert not bare, (f"{len(bare)} of {len(elements)} contract elements have no leading comment "
                      "(a `//` line right above them), so `grpcurl describe` shows a bare name:\n  "
                      + "\n  ".join(bare))


def test_every_proto_file_is_checked(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    names = {proto.name for proto in descriptor_set.file}
    assert names == {f"docent/v1/{path.name}" for path in PROTO_FILES}
    assert {"docent/v1/ingest.proto", "docent/v1/retrieval.proto", "docent/v1/chat.proto"} <= names


def test_rpc_messages_follow_the_aip_naming(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    """What buf's STANDARD naming rules check, with buf.yaml's two AIP exceptions, offline: each RPC
    has its own XRequest and XResponse, except that a Get returns its resource (AIP-131) and a
    Delete returns google.protobuf.Empty (AIP-135). buf.yaml can scope the Get exception only to
    whole files, so this test is what keeps it to Get RPCs."""
    methods = [(service.name, method) for proto in descriptor_set.file for service in proto.service
               for method in service.method]
    del descriptor_set
    assert methods
    wrong = []
    for service, method in methods:
        request, response = method.input_type.rsplit(".", 1)[-1], method.output_type.rsplit(".", 1)[-1]
        if request not in (f"{method.name}Request", f"{service}{method.name}Request"):
            wrong.append(f"{service}.{method.name} takes {method.input_type}")
        if response in (f"{method.name}Response", f"{service}{method.name}Response"):
            continue
        if method.name.startswith("Get") and method.output_type == f".docent.v1.{method.name[3:]}":
            continue  # AIP-131: Get returns the resource
        if method.name.startswith("Delete") and method.output_type == ".google.protobuf.Empty":
            continue  # AIP-135: Delete returns Empty
        wrong.append(f"{service}.{method.name} returns {method.output_type}")
    assert not wrong, "RPC request/response names outside the AIP shapes buf.yaml allows:\n  " + "\n  ".join(wrong)
    requests = Counter(method.input_type for _, method in methods)
    assert all(count == 1 for count in requests.values()), f"a request type shared by several RPCs: {requests}"
    responses = Counter(method.output_type for _, method in methods if method.output_type != ".google.protobuf.Empty")
    assert all(count == 1 for count in responses.values()), f"a response type shared by several RPCs: {responses}"
