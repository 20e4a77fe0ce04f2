"""The retrieval service process: the only owner of the vector store."""

from __future__ import annotations

import grpc
from docent.v1 import retrieval_pb2, retrieval_pb2_grpc

from services.runtime.config import Settings

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


class RetrievalApp:
    name = "retrieval"
    service_names = (SERVICE_NAME,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def start(self) -> None:
        return None

    def register(self, server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(
            retrieval_pb2_grpc.RetrievalServiceServicer(), server
        )

    async def check_ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
