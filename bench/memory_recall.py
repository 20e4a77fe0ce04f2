"""Memory recall: does a question find the earlier turn that answered it, in another conversation?

The earlier turns are the 125 entries of the Python FAQ corpus (bench/eval/corpora/faq), each asked
with its own heading ("What is Python?") and answered with the opening of its entry, about as long
as the offline answerer's answers. The later questions are the 111 FAQ questions of the eval suite
(bench/eval/faq.json), written independently of the headings: each one's gold turn is the turn of
its entry. Every turn is written to chat memory through the real RetrievalService (UpsertChatTurn)
and every question searches chat history only (weights documents=0, chat_history=1), in the server's
default search mode.

Each strategy decides what is embedded for a turn (the store keeps the full text either way):
- `full`: "User: <question>\\nAssistant: <answer>", what index_chat_turn embedded up to now;
- `question`: the question alone — the vector Search already computed for the turn's standalone
  question, so memory would cost no model run at all;
- `short`: the question and the answer's first ANSWER_WORDS words.
It reports recall@1/@5, MRR and the mean number of model tokens embedded per turn.

`python -m bench.memory_recall [--json out.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from docent.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.app import retrieval_service
from services.runtime.auth import mint_token
from services.runtime.config import Settings
from services.runtime.embeddings import Embedder, Tokenizer, create_embedder
from services.runtime.grpc_client import call_options
from services.runtime.grpc_server import serve

REPO = Path(__file__).resolve().parents[1]
SECRET = "memory-recall-bench-" + "x" * 32
# the offline answerer's answers are ~50 words (docs/QUALITY.md)
ANSWER_WORDS = 50
SHORT_ANSWER_WORDS = 24
# the model reads at most this many tokens of a text
MODEL_TOKENS = 256


def faq_turns() -> dict[str, tuple[str, str]]:
    """Entry id → (the heading question, the opening of the entry as the answer)."""
    suite = json.loads((REPO / "bench/eval/faq.json").read_text())
    turns: dict[str, tuple[str, str]] = {}
    for document in suite["documents"]:
        lines = (REPO / document["path"]).read_text().splitlines()
        question = lines[0].lstrip("# ").strip()
        body = " ".join(line.strip() for line in lines[1:] if line.strip() and not line.startswith("*"))
        turns[document["id"]] = (question, " ".join(body.split()[:ANSWER_WORDS]))
    return turns


def faq_questions() -> list[tuple[str, str]]:
    suite = json.loads((REPO / "bench/eval/faq.json").read_text())
    return [(item["question"], item["document"]) for item in suite["questions"]]


Strategy = Callable[[str, str], str]
STRATEGIES: dict[str, Strategy] = {
    "full": lambda question, answer: f"User: {question}\nAssistant: {answer}",
    "question": lambda question, answer: question,
    "short": lambda question, answer: f"User: {question}\nAssistant: {' '.join(answer.split()[:SHORT_ANSWER_WORDS])}",
}


async def measure(embedder: Embedder, strategy: Strategy, data_dir: Path) -> dict[str, float]:
    settings = Settings(_env_file=None, data_dir=data_dir, jwt_secret=SECRET)  # type: ignore[call-arg]
    turns, questions = faq_turns(), faq_questions()
    tokenizer = Tokenizer.shared()
    texts = {key: strategy(question, answer) for key, (question, answer) in turns.items()}
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(retrieval_service(settings, embedder=embedder), settings, port=0,
                                       jwt_secret=SECRET, on_bound=bound.set_result, stop_event=stop))
    user = f"memory-{uuid.uuid4().hex[:8]}"
    options = call_options(mint_token(SECRET, user, 3600), 60)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{await bound}") as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            async for health in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                                          timeout=120):
                if health.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            keys = list(texts)
            started = time.perf_counter()
            vectors = embedder.embed([texts[key] for key in keys])
            embed_seconds = time.perf_counter() - started
            turn_of: dict[str, str] = {}
            for key, vector in zip(keys, vectors, strict=True):
                question, answer = turns[key]
                turn_id = str(uuid.uuid4())
                turn_of[turn_id] = key
                await stub.UpsertChatTurn(retrieval_pb2.UpsertChatTurnRequest(
                    turn_id=turn_id, conversation_id=str(uuid.uuid4()), user_message=question,
                    assistant_message=answer, embedding=vector.tolist(), embedding_model=embedder.model_name),
                    **options)
            ranks: list[int] = []
            for question, gold in questions:
                reply = await stub.Search(retrieval_pb2.SearchRequest(
                    query=question, top_k=10, weights=retrieval_pb2.SourceWeights(documents=0, chat_history=1)),
                    **options)
                found = [turn_of.get(result.chat_turn.turn_id) for result in reply.results]
                ranks.append(found.index(gold) + 1 if gold in found else 0)
    finally:
        stop.set()
        await server
    hits = len(ranks)
    return {
        "recall_at_1": round(sum(1 for rank in ranks if rank == 1) / hits, 3),
        "recall_at_5": round(sum(1 for rank in ranks if 0 < rank <= 5) / hits, 3),
        "mrr": round(sum(1 / rank for rank in ranks if rank) / hits, 3),
        "tokens_per_turn": round(
            sum(min(tokenizer.count(text), MODEL_TOKENS) for text in texts.values()) / len(texts), 1),
        "embed_ms_per_turn": round(embed_seconds * 1000 / len(texts), 2),
        "questions": hits,
        "turns": len(texts),
    }


async def run(strategies: list[str]) -> dict[str, dict[str, float]]:
    embedder = create_embedder(Settings(_env_file=None))  # type: ignore[call-arg]
    results: dict[str, dict[str, float]] = {}
    for name in strategies:
        with tempfile.TemporaryDirectory(prefix="docent-memory-recall-") as directory:
            results[name] = await measure(embedder, STRATEGIES[name], Path(directory))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.strategies))
    for name, figures in results.items():
        print(f"{name:9s} " + " ".join(f"{key}={value}" for key, value in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
