"""`docent eval`: retrieval quality on a set of questions with known answer pages.

The corpus is ingested through the real pipeline (UploadDocument → worker → completed), each
question is asked through RetrievalService.Search (documents only), and a result counts as a hit
when it comes from the gold document and its page range contains a gold page. Reports recall@1/5/10
and MRR for dense and hybrid search, with Search latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from docent.v1 import ingest_pb2, ingest_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.ingest.cli import _upload_requests
from services.runtime.grpc_client import call_options, create_channel

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SET = REPO / "bench" / "eval" / "r_data.json"
MODES = {"dense": retrieval_pb2.SEARCH_MODE_DENSE, "hybrid": retrieval_pb2.SEARCH_MODE_HYBRID}
CUTOFFS = (1, 5, 10)
TOP_K = 10


@dataclass(frozen=True)
class Question:
    text: str
    document: str
    pages: frozenset[int]


def first_hit_rank(results, document_id: str, pages: frozenset[int]) -> int | None:
    """1-based rank of the first result from the gold document whose page range holds a gold page."""
    for rank, result in enumerate(results, start=1):
        hit = result.document
        if hit.document_id == document_id and any(hit.page_start <= page <= hit.page_end for page in pages):
            return rank
    return None


def metrics(ranks: list[int | None]) -> dict[str, float]:
    total = len(ranks) or 1
    scores = {f"recall@{k}": sum(1 for rank in ranks if rank is not None and rank <= k) / total for k in CUTOFFS}
    scores["mrr"] = sum(1 / rank for rank in ranks if rank is not None) / total
    return {name: round(value, 4) for name, value in scores.items()}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] if ordered else 0.0


def load_set(path: Path) -> tuple[dict, list[Question]]:
    spec = json.loads(path.read_text())
    questions = [Question(item["question"], item["document"], frozenset(item["pages"])) for item in spec["questions"]]
    return spec, questions


async def ingest_corpus(channel: grpc.aio.Channel, token: str, documents: list[dict], base: Path,
                        timeout: float = 900) -> dict[str, str]:
    """Upload every document and wait until each is completed; returns set id → document id."""
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    ids: dict[str, str] = {}
    for document in documents:
        path = (base / document["path"]).resolve()
        reply = await stub.UploadDocument(_upload_requests(path), **call_options(token, 300))
        ids[document["id"]] = reply.document.id
    deadline = time.monotonic() + timeout
    for name, document_id in ids.items():
        while True:
            state = await stub.GetDocument(ingest_pb2.GetDocumentRequest(document_id=document_id),
                                           **call_options(token, 30))
            if state.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED:
                break
            if state.status == ingest_pb2.DOCUMENT_STATUS_FAILED:
                raise RuntimeError(f"{name} failed to ingest: {state.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not completed after {timeout:.0f}s")
            await asyncio.sleep(0.25)
    return ids


async def ask_all(channel: grpc.aio.Channel, token: str, questions: list[Question], ids: dict[str, str],
                  mode: str) -> dict:
    stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
    ranks: list[int | None] = []
    latencies: list[float] = []
    misses: list[str] = []
    for question in questions:
        request = retrieval_pb2.SearchRequest(
            query=question.text, top_k=TOP_K, mode=MODES[mode],
            weights=retrieval_pb2.SourceWeights(documents=1.0, chat_history=0.0), min_score_documents=-1.0)
        started = time.perf_counter()
        reply = await stub.Search(request, **call_options(token, 30))
        latencies.append((time.perf_counter() - started) * 1000)
        rank = first_hit_rank(reply.results, ids[question.document], question.pages)
        ranks.append(rank)
        if rank is None or rank > 5:
            misses.append(question.text)
    return {**metrics(ranks), "latency_ms_p50": round(statistics.median(latencies), 2),
            "latency_ms_p95": round(percentile(latencies, 0.95), 2), "questions": len(questions),
            "missed_at_5": misses}


async def run_eval(set_path: Path = DEFAULT_SET, *, ingest_target: str | None = None,
                   retrieval_target: str | None = None, token: str | None = None,
                   modes: tuple[str, ...] = ("dense", "hybrid")) -> dict:
    """Evaluate against a running Docent (targets + token) or a throwaway one started for the run."""
    spec, questions = load_set(set_path)
    if ingest_target and retrieval_target and token:
        return await _evaluate(spec, questions, set_path, ingest_target, retrieval_target, token, modes)
    from services.devstack import DevStack

    stack = await asyncio.to_thread(DevStack().start)
    try:
        return await _evaluate(spec, questions, set_path, stack.target("ingest"), stack.target("retrieval"),
                               stack.token(f"eval-{uuid.uuid4().hex[:8]}"), modes)
    finally:
        await asyncio.to_thread(stack.remove)


async def _evaluate(spec: dict, questions: list[Question], set_path: Path, ingest_target: str,
                    retrieval_target: str, token: str, modes: tuple[str, ...]) -> dict:
    started = time.perf_counter()
    async with create_channel(ingest_target) as ingest_channel, create_channel(retrieval_target) as channel:
        ids = await ingest_corpus(ingest_channel, token, spec["documents"], REPO)
        ingest_seconds = time.perf_counter() - started
        # a first pass fills the query-embedding cache, so the modes' latencies compare like for like
        await ask_all(channel, token, questions, ids, modes[0])
        results = {mode: await ask_all(channel, token, questions, ids, mode) for mode in modes}
    return {"set": str(set_path), "name": spec.get("name", set_path.stem), "questions": len(questions),
            "ingest_seconds": round(ingest_seconds, 2), "modes": results}


def format_table(report: dict) -> str:
    lines = [f"{report['name']}: {report['questions']} questions (ingested in {report['ingest_seconds']} s)",
             "mode     recall@1  recall@5  recall@10  MRR     p50 ms  p95 ms  (Search, query embedding cached)"]
    for mode, values in report["modes"].items():
        lines.append(f"{mode:<8} {values['recall@1']:>8.3f}  {values['recall@5']:>8.3f}  {values['recall@10']:>9.3f}"
                     f"  {values['mrr']:.3f}  {values['latency_ms_p50']:>6.1f}  {values['latency_ms_p95']:>6.1f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import os

    from services.runtime.auth import jwt_secret, mint_token
    from services.runtime.config import load_settings

    set_path = Path(args.eval_set) if args.eval_set else DEFAULT_SET
    ingest_target = getattr(args, "ingest_target", None) or os.environ.get("DOCENT_INGEST_TARGET")
    retrieval_target = getattr(args, "retrieval_target", None) or os.environ.get("DOCENT_RETRIEVAL_TARGET")
    token = None
    if ingest_target and retrieval_target:
        token = mint_token(jwt_secret(load_settings()), f"eval-{uuid.uuid4().hex[:8]}", 3600)
    report = asyncio.run(run_eval(set_path, ingest_target=ingest_target, retrieval_target=retrieval_target,
                                  token=token))
    print(format_table(report))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0
