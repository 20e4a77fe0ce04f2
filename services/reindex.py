"""`docent reindex`: rebuild every vector, e.g. after the embedding model changed.

It runs against a running Docent (`docent up`, or a cluster through port-forwards / the
DOCENT_*_TARGET settings), through the services' own RPCs, with an operator token minted from the
deployment's signing key:
1. RetrievalService.ResetIndex — the collections are recreated for the model the retrieval service
   loaded (after a model change it starts with the old vectors and answers INDEX_REBUILD_REQUIRED
   until this step);
2. IngestService.ReindexDocuments — every document that did not fail goes back to pending and is
   queued; the workers embed and index it again on the normal, crash-safe path;
3. ChatService.ReindexMemory — every chat turn's memory is queued to be embedded again.
Each step is idempotent: if one fails, run the command again.
"""

from __future__ import annotations

import sys

import grpc

from docent.v1 import chat_pb2, chat_pb2_grpc, ingest_pb2, ingest_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.runtime.auth import jwt_secret, mint_token
from services.runtime.config import Settings
from services.runtime.errors import error_info
from services.runtime.grpc_client import call_options, create_channel

OPERATOR = "docent-reindex"
# requeuing touches every row and message once: generous, but bounded
STEP_TIMEOUT_SECONDS = 600.0


async def reindex(settings: Settings) -> int:
    options = call_options(mint_token(jwt_secret(settings), OPERATOR, 3600, admin=True), STEP_TIMEOUT_SECONDS)
    step = "retrieval"
    try:
        async with create_channel(settings.target("retrieval")) as channel:
            reset = await retrieval_pb2_grpc.RetrievalServiceStub(channel).ResetIndex(
                retrieval_pb2.ResetIndexRequest(), **options)
        print(f"vector store rebuilt for {reset.embedding_model} ({reset.dimension}-d, {reset.vector_store})")
        step = "ingest"
        async with create_channel(settings.target("ingest")) as channel:
            documents = await ingest_pb2_grpc.IngestServiceStub(channel).ReindexDocuments(
                ingest_pb2.ReindexDocumentsRequest(), **options)
        print(f"{documents.documents_requeued} documents queued again ({documents.documents_enqueued} enqueued now; "
              "the sweeper queues the rest)")
        step = "chat"
        async with create_channel(settings.target("chat")) as channel:
            memory = await chat_pb2_grpc.ChatServiceStub(channel).ReindexMemory(
                chat_pb2.ReindexMemoryRequest(), **options)
        print(f"{memory.turns_requeued} chat turns to re-embed. The workers do the rest: follow them with "
              "`docent queue`.")
        return 0
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        reason = info.reason if info else ""
        detail = error.details() or error.code().name
        print(f"docent: reindex stopped at the {step} service ({settings.target(step)}): {detail}"
              f"{f' [{reason}]' if reason else ''}. Is Docent running? Start it with `docent up`, then run "
              "`docent reindex` again (each step is safe to repeat).", file=sys.stderr)
        return 1
