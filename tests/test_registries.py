"""Vector stores and answerers are chosen from their registries by one setting each."""

from __future__ import annotations

import pytest

from services.chat.answerers import create_answering
from services.retrieval.store_edge import EdgeStore
from services.retrieval.store_qdrant import QdrantServerStore
from services.retrieval.stores import create_store
from tests.conftest import make_settings


async def test_auto_picks_the_store_the_urls_say(tmp_path) -> None:
    assert isinstance(create_store(make_settings(data_dir=tmp_path)), EdgeStore)
    server = create_store(make_settings(data_dir=tmp_path, qdrant_url="http://127.0.0.1:6333"))
    assert isinstance(server, QdrantServerStore)
    await server.close()
    # named explicitly, the embedded store even with a Qdrant URL set
    assert isinstance(create_store(make_settings(data_dir=tmp_path, qdrant_url="http://127.0.0.1:6333",
                                                 vector_store="edge")), EdgeStore)


def test_auto_picks_the_answerer_the_urls_say() -> None:
    answerer, _ = create_answering(make_settings())
    assert answerer.model == "extractive"
    answerer, _ = create_answering(make_settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m"))
    assert answerer.model == "m"


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("vector_store", "milvus", "invalid setting DOCENT_VECTOR_STORE='milvus': expected one of auto, qdrant, edge"),
    ("vector_store", "qdrant", "DOCENT_VECTOR_STORE=qdrant needs DOCENT_QDRANT_URL"),
    ("answerer", "gpt", "invalid setting DOCENT_ANSWERER='gpt': expected one of auto, llm, extractive"),
    ("answerer", "llm", "DOCENT_ANSWERER=llm needs DOCENT_LLM_BASE_URL"),
])
def test_a_bad_choice_stops_with_one_clear_line(tmp_path, setting: str, value: str, message: str) -> None:
    settings = make_settings(data_dir=tmp_path, **{setting: value})
    with pytest.raises(SystemExit) as stopped:
        create_store(settings) if setting == "vector_store" else create_answering(settings)
    assert message in str(stopped.value)
