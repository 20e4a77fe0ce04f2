"""The names and limits every process agrees on, written once.

gRPC service names come from the generated descriptors (the protos are their source); the
Dramatiq actor names are the contract between the services that enqueue and the workers that
declare the actors (see services.runtime.queue).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Literal

from docent.v1 import chat_pb2, ingest_pb2, retrieval_pb2

GrpcRole = Literal["ingest", "retrieval", "chat"]

INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
RETRIEVAL_SERVICE = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name
CHAT_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
# the gRPC service each role serves, in the order they start (chat and ingest call retrieval, chat calls ingest)
GRPC_SERVICES: dict[GrpcRole, str] = {
    "retrieval": RETRIEVAL_SERVICE,
    "ingest": INGEST_SERVICE,
    "chat": CHAT_SERVICE,
}

# Dramatiq actors, by the queue they run on
PROCESS_DOCUMENT = "process_document"  # queue "ingest"
INDEX_CHAT_TURN = "index_chat_turn"  # queue "memory"

# the vector collection of document chunks; reported to clients in Document.vector_collection
CHUNKS_COLLECTION = "docent_chunks"

# a question (chat) or query (search) longer than this is refused with QUERY_TOO_LONG
MAX_QUERY_CHARS = 4000

# the largest gRPC message either side accepts (an upload streams in smaller pieces)
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def personal_collection_id(user_id: str) -> str:
    """The id of a user's personal collection, derived from the user id so that any service can name it
    without asking the ingest service, which owns collections (its migration 0006 computes the same)."""
    return str(uuid.UUID(hashlib.md5(f"docent-personal:{user_id}".encode()).hexdigest()))
