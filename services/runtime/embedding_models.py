"""The local embedding models by name, the retrieval values tuned for each, and the check of their files.

Apart from services/runtime/embeddings.py (the embedders themselves) so that settings can validate
a model name and fill in its tuned values without loading any model code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"
MULTILINGUAL_MODEL_NAME = "multilingual-e5-small"
# DOCENT_EMBEDDING_MODEL without DOCENT_EMBEDDING_BASE_URL names one of these
LOCAL_MODELS = (LOCAL_MODEL_NAME, MULTILINGUAL_MODEL_NAME)


@dataclass(frozen=True)
class RetrievalTuning:
    """Retrieval settings whose best value depends on the embedding model (each DOCENT_ setting of the same
    name overrides its value). Cosine scores live on each model's own scale: MiniLM gives an unrelated
    passage ~0.1 and a matching one ~0.6, e5 gives ~0.79 and ~0.88."""

    min_score_documents: float
    min_score_chat_history: float
    hybrid_dense_weight: float


# MiniLM's values are the ones tuned before e5 existed (docs/QUALITY.md). e5's thresholds cut its score
# distribution where MiniLM's cut MiniLM's (the same percentile of question-passage and question-question
# pairs of the dev split: 0.2 -> 0.81, 0.35 -> 0.84); its dense weight won on the dev split.
TUNING = {
    LOCAL_MODEL_NAME: RetrievalTuning(min_score_documents=0.2, min_score_chat_history=0.35, hybrid_dense_weight=0.0),
    MULTILINGUAL_MODEL_NAME: RetrievalTuning(min_score_documents=0.81, min_score_chat_history=0.84,
                                             hybrid_dense_weight=0.5),
}
# an endpoint's model: scales like MiniLM's are the common case among sentence-transformer models
ENDPOINT_TUNING = TUNING[LOCAL_MODEL_NAME]


class ModelFileError(RuntimeError):
    pass


def file_sha256(path: Path) -> str:
    """The sha256 of a model file, read in 1 MiB blocks (shared by every model loaded from a wheel)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_model_file(path: Path, expected: str) -> Path:
    if not path.exists():
        raise ModelFileError(f"model file missing: {path} (run `make setup`)")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelFileError(f"model file {path} has sha256 {actual}, expected {expected}; refusing to load it")
    return path
