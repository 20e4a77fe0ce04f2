"""User commands of the ingest side: `docent ingest | docs`, gRPC clients like any other: they send the
bearer credential the root CLI chose (an API key, or a token minted from the local secret).
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from docent.v1 import ingest_pb2, ingest_pb2_grpc
from services.runtime.config import Settings
from services.runtime.grpc_client import call_options, create_channel

UPLOAD_CHUNK_BYTES = 256 * 1024
BAR_WIDTH = 24
STATUS_NAMES = {value: name.removeprefix("DOCUMENT_STATUS_").lower()
                for name, value in ingest_pb2.DocumentStatus.items()}
TERMINAL = {ingest_pb2.DOCUMENT_STATUS_COMPLETED, ingest_pb2.DOCUMENT_STATUS_FAILED}


def main(args: argparse.Namespace, settings: Settings, credential: str) -> int:
    if args.command == "ingest":
        return asyncio.run(ingest(settings, [Path(name) for name in args.files], credential, wait=not args.no_wait))
    if args.command == "docs":
        return asyncio.run(list_documents(settings, credential))
    return 2


def _options(settings: Settings, credential: str, timeout: float | None = None) -> dict[str, object]:
    return call_options(credential, timeout or settings.grpc_deadline_seconds)


async def _upload_requests(path: Path) -> AsyncIterator[ingest_pb2.UploadDocumentRequest]:
    content_type = mimetypes.guess_type(path.name)[0] or ""
    yield ingest_pb2.UploadDocumentRequest(
        metadata=ingest_pb2.UploadMetadata(filename=path.name, content_type=content_type))
    with path.open("rb") as handle:
        while block := await asyncio.to_thread(handle.read, UPLOAD_CHUNK_BYTES):
            yield ingest_pb2.UploadDocumentRequest(chunk=block)


def describe(document: ingest_pb2.Document) -> str:
    """One human line: status and stage with counts, e.g. 'processing · embedding 120/310'."""
    status = STATUS_NAMES.get(document.status, "unknown")
    progress = document.progress
    if document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED:
        return f"completed · {document.page_count} pages, {document.chunk_count} chunks"
    if document.status == ingest_pb2.DOCUMENT_STATUS_FAILED:
        return f"failed · {document.error}" + (f" ({document.error_reason})" if document.error_reason else "")
    if progress.stage == "parsing" and progress.pages_total:
        return f"{status} · parsing page {progress.pages_done}/{progress.pages_total}"
    if progress.stage in ("embedding", "indexing") and progress.chunks_total:
        return f"{status} · {progress.stage} chunk {progress.chunks_done}/{progress.chunks_total}"
    return f"{status} · {progress.stage or 'queued'}"


def fraction(document: ingest_pb2.Document) -> float:
    if document.status in TERMINAL:
        return 1.0
    progress = document.progress
    parsed = progress.pages_done / progress.pages_total if progress.pages_total else 0.0
    embedded = progress.chunks_done / progress.chunks_total if progress.chunks_total else 0.0
    # parsing is about a fifth of the work; embedding the rest
    return 0.2 * parsed + 0.8 * embedded


class ProgressBoard:
    """One line per file: redrawn in place on a terminal, a line per change otherwise."""

    def __init__(self, names: list[str], stream=sys.stdout) -> None:
        self.names = names
        self.lines = ["waiting"] * len(names)
        self.stream = stream
        self.tty = stream.isatty()
        self.width = max(len(name) for name in names)
        self.drawn = False

    def update(self, index: int, text: str, done: float | None = None) -> None:
        bar = ""
        if done is not None:
            filled = round(done * BAR_WIDTH)
            bar = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] "
        line = f"{self.names[index]:<{self.width}}  {bar}{text}"
        if line == self.lines[index]:
            return
        self.lines[index] = line
        if not self.tty:
            print(line, file=self.stream, flush=True)
            return
        if self.drawn:
            self.stream.write(f"\x1b[{len(self.lines)}F")
        self.stream.write("".join(f"\x1b[2K{text}\n" for text in self.lines))
        self.stream.flush()
        self.drawn = True


async def ingest(settings: Settings, paths: list[Path], credential: str, *, wait: bool = True) -> int:
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        print(f"docent: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    board = ProgressBoard([path.name for path in paths])
    async with create_channel(settings.target("ingest")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        results = await asyncio.gather(*(_ingest_one(settings, stub, board, index, path, credential, wait)
                                         for index, path in enumerate(paths)))
    return 0 if all(results) else 1


async def _ingest_one(settings: Settings, stub: ingest_pb2_grpc.IngestServiceStub, board: ProgressBoard,
                      index: int, path: Path, credential: str, wait: bool) -> bool:
    board.update(index, "uploading")
    try:
        reply = await stub.UploadDocument(_upload_requests(path), **_options(settings, credential, 300))
    except grpc.aio.AioRpcError as error:
        board.update(index, f"rejected · {error.details()}")
        return False
    document = reply.document
    note = " (already uploaded)" if reply.deduplicated else ""
    if not wait:
        board.update(index, f"{describe(document)}{note} · id {document.id}")
        return True
    try:
        # a long document can take a while: the watch has a generous deadline of its own
        async for event in stub.WatchDocument(ingest_pb2.WatchDocumentRequest(document_id=document.id),
                                              **_options(settings, credential, 4 * 3600)):
            document = event.document
            board.update(index, describe(document) + note, fraction(document))
    except grpc.aio.AioRpcError as error:
        board.update(index, f"watch failed · {error.code().name}: {error.details()}")
        return False
    return document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED


async def list_documents(settings: Settings, credential: str) -> int:
    async with create_channel(settings.target("ingest")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        page_token, rows = "", []
        try:
            while True:
                request = ingest_pb2.ListDocumentsRequest(page_size=100, page_token=page_token)
                reply = await stub.ListDocuments(request, **_options(settings, credential))
                rows.extend(reply.documents)
                page_token = reply.next_page_token
                if not page_token:
                    break
        except grpc.aio.AioRpcError as error:
            print(f"docent: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if not rows:
        print("no documents")
        return 0
    width = max(len(document.filename) for document in rows)
    for document in rows:
        created = document.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M")
        print(f"{document.id}  {created}  {document.filename:<{width}}  {describe(document)}")
    return 0

