"""The vector stores the retrieval service can keep its collections in, one registration each.

`DOCENT_VECTOR_STORE` names one; `auto` (the default) takes the first whose `auto` test passes:
a Qdrant server when `DOCENT_QDRANT_URL` is set, else the embedded engine under the data dir.
Adding a store is one module implementing `services.retrieval.store.VectorStore` plus one line
in `STORES` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from services.retrieval.store import VectorStore
from services.runtime.config import Settings
from services.runtime.registry import Kind, build_chosen


def _qdrant_server(settings: Settings) -> VectorStore:
    from services.retrieval.store_qdrant import QdrantServerStore

    if not settings.qdrant_url:
        raise SystemExit("docent: DOCENT_VECTOR_STORE=qdrant needs DOCENT_QDRANT_URL")
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    return QdrantServerStore.from_url(settings.qdrant_url, api_key)


def _embedded_edge(settings: Settings) -> VectorStore:
    from services.retrieval.store_edge import EdgeStore

    return EdgeStore(settings.data_dir / "vectors")


STORES: tuple[Kind[VectorStore], ...] = (
    Kind("qdrant", _qdrant_server, auto=lambda settings: bool(settings.qdrant_url)),
    Kind("edge", _embedded_edge, auto=lambda settings: True),
)


def create_store(settings: Settings) -> VectorStore:
    return build_chosen(STORES, settings.vector_store, settings, "DOCENT_VECTOR_STORE")
