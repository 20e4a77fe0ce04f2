"""The reranking stage: the /rerank HTTP client against a real local stand-in server, the stage's
score and fallback rules, and Search through a real in-process retrieval service with reranking on.

The stand-in (a ThreadingHTTPServer on 127.0.0.1) plays the remote reranker, which cannot be
reached from here. Its behaviour is chosen by the first path segment: /ok (Jina/Cohere shape),
/tei (bare-list shape), /flaky (503 once per query, then ok), /down (always 503), /hang (never
answers until the test ends), /bad (400), /garbage (indexes out of range), /live (whatever
`server.live_mode` says, for the service test). Its score: 1.0 for a document holding the query's
"boost" word (the word after `boost:` in the path's second segment), else 0.5 minus a tie-break
that keeps the given order.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from prometheus_client import REGISTRY

from docent.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.app import retrieval_service
from services.retrieval.rerank import (
    EndpointReranker,
    Ranked,
    RerankStage,
    RerankUnavailable,
    parse_results,
    rerank_url,
)
from services.retrieval.store import Hit
from services.runtime.config import Settings
from tests.conftest import auth, make_settings, running_service
from tests.test_retrieval_service import index_facts


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, dict]] = []
        self.flaky_seen: set[str] = set()
        self.live_mode = "ok"
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, mode: str, *, settle: float = 0.0) -> int:
        """Requests seen for `mode`; with `settle`, wait that long for late ones to be read (loaded machine)."""
        deadline = time.monotonic() + settle
        while True:
            with self.lock:
                seen = sum(1 for path, _ in self.requests if path.split("/")[1] == mode)
            if time.monotonic() >= deadline:
                return seen
            time.sleep(0.05)


class Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        with self.server.lock:
            self.server.requests.append((self.path, body))
        parts = self.path.strip("/").split("/")
        mode = self.server.live_mode if parts[0] == "live" else parts[0]
        boost = next((part.removeprefix("boost:") for part in parts if part.startswith("boost:")), "")
        if parts[-1] != "rerank":
            return self._send(404, {"error": "not found"})
        if mode == "hang":
            self.server.release.wait(10)  # then drop the connection: the client is long gone
            self.close_connection = True
            return None
        if mode == "down":
            return self._send(503, {"error": "loading model"})
        if mode == "bad":
            return self._send(400, {"error": "unknown model"})
        if mode == "flaky":
            with self.server.lock:
                first = body["query"] not in self.server.flaky_seen
                self.server.flaky_seen.add(body["query"])
            if first:
                return self._send(503, {"error": "busy"})
        documents = body.get("texts") if mode == "tei" else body.get("documents")
        scores = [1.0 if boost and boost in text.lower() else 0.5 - index / 1000
                  for index, text in enumerate(documents)]
        if mode == "garbage":
            return self._send(200, {"results": [{"index": len(documents), "relevance_score": 1.0}]})
        if mode == "tei":
            return self._send(200, [{"index": index, "score": score} for index, score in enumerate(scores)])
        top_n = int(body.get("top_n", len(documents)))
        ranked = sorted(range(len(documents)), key=lambda index: -scores[index])[:top_n]
        return self._send(200, {"model": body.get("model", ""), "usage": {"total_tokens": 1},
                                "results": [{"index": index, "relevance_score": scores[index]} for index in ranked]})


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, name="rerank-standin", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def client(base_url: str, **overrides: object) -> EndpointReranker:
    values: dict[str, object] = {"rerank": "endpoint", "rerank_base_url": base_url, "rerank_model": "m",
                                 "rerank_timeout_seconds": 2.0, "rerank_max_retries": 1}
    values.update(overrides)
    return EndpointReranker(Settings(_env_file=None, **values))  # type: ignore[call-arg]


DOCS = ["R reads CSV files with read.csv.", "Stata files are read with read.dta.", "The cafeteria opens at noon."]


# the endpoint client ---------------------------------------------------------------------------

async def test_documents_shape_orders_by_relevance(standin: StandIn) -> None:
    reranker = client(f"{standin.base}/ok/boost:stata/v1")
    try:
        ranked = await reranker.rerank("stata files", DOCS)
    finally:
        await reranker.close()
    assert [entry.index for entry in ranked] == [1, 0, 2]
    assert ranked[0].score == pytest.approx(1.0)
    path, body = standin.requests[-1]
    assert path == "/ok/boost:stata/v1/rerank"
    assert body == {"model": "m", "query": "stata files", "documents": DOCS, "top_n": 3}


async def test_texts_shape_for_tei(standin: StandIn) -> None:
    reranker = client(f"{standin.base}/tei/boost:cafeteria/rerank", rerank_request_format="texts")
    try:
        ranked = await reranker.rerank("lunch", DOCS)
    finally:
        await reranker.close()
    assert [entry.index for entry in ranked] == [2, 0, 1]
    assert standin.requests[-1][1] == {"query": "lunch", "texts": DOCS, "truncate": True}


async def test_a_503_is_retried_once_then_succeeds(standin: StandIn) -> None:
    reranker = client(f"{standin.base}/flaky/boost:csv", rerank_max_retries=1)
    before = standin.count("flaky")
    try:
        ranked = await reranker.rerank("csv please", DOCS)
    finally:
        await reranker.close()
    assert ranked[0].index == 0
    assert standin.count("flaky") - before == 2


async def test_a_down_server_costs_bounded_attempts_then_unavailable(standin: StandIn) -> None:
    reranker = client(f"{standin.base}/down", rerank_max_retries=2)
    before = standin.count("down")
    try:
        with pytest.raises(RerankUnavailable) as raised:
            await reranker.rerank("q", DOCS)
    finally:
        await reranker.close()
    assert standin.count("down") - before == 3
    assert raised.value.reason == "RERANKER_UNAVAILABLE" and raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert "HTTP 503" in raised.value.message and raised.value.metadata["attempts"] == "3"


async def test_a_hanging_server_is_cut_off_per_attempt(standin: StandIn) -> None:
    reranker = client(f"{standin.base}/hang", rerank_timeout_seconds=0.3, rerank_max_retries=1)
    before = standin.count("hang")
    started = time.monotonic()
    try:
        with pytest.raises(RerankUnavailable, match=r"no reply within 0\.3s"):
            await reranker.rerank("q", DOCS)
    finally:
        await reranker.close()
    elapsed = time.monotonic() - started
    # two attempts of 0.3 s and a 0.1 s backoff, nowhere near the stand-in's 10 s hang
    assert 0.6 <= elapsed < 2.0
    assert standin.count("hang", settle=1.0) - before == 2


async def test_a_client_error_is_not_retried(standin: StandIn) -> None:
    reranker = client(f"{standin.base}/bad", rerank_max_retries=3)
    before = standin.count("bad")
    try:
        with pytest.raises(RerankUnavailable, match="HTTP 400"):
            await reranker.rerank("q", DOCS)
    finally:
        await reranker.close()
    assert standin.count("bad") - before == 1


async def test_a_malformed_reply_is_refused(standin: StandIn) -> None:
    reranker = client(f"{standin.base}/garbage")
    try:
        with pytest.raises(RerankUnavailable, match="unusable reply"):
            await reranker.rerank("q", DOCS)
    finally:
        await reranker.close()


async def test_nothing_listening_is_unavailable() -> None:
    reranker = client("http://127.0.0.1:9", rerank_max_retries=1, rerank_timeout_seconds=1.0)
    try:
        with pytest.raises(RerankUnavailable, match="failed 2 time"):
            await reranker.rerank("q", DOCS)
    finally:
        await reranker.close()


def test_url_and_reply_parsing() -> None:
    assert rerank_url("http://h:8080") == "http://h:8080/rerank"
    assert rerank_url("http://h/v1/") == "http://h/v1/rerank"
    assert rerank_url("http://h/v1/rerank") == "http://h/v1/rerank"
    assert parse_results({"results": [{"index": 1, "relevance_score": 0.2}, {"index": 0, "relevance_score": 0.9}]},
                         2) == [Ranked(0, 0.9), Ranked(1, 0.2)]
    assert parse_results([{"index": 0, "score": -3}, {"index": 1, "score": 4.5}], 2) == [Ranked(1, 4.5), Ranked(0, -3)]
    for bad in ({"results": [{"index": 0, "relevance_score": 1}, {"index": 0, "relevance_score": 1}]},
                {"results": [{"index": "0", "relevance_score": 1}]}, {"results": [{"index": 0}]}, {"data": []}):
        with pytest.raises(ValueError):
            parse_results(bad, 2)


def test_settings_need_a_url_for_the_endpoint() -> None:
    with pytest.raises(ValueError, match="DOCENT_RERANK_BASE_URL"):
        Settings(_env_file=None, rerank="endpoint")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="http"):
        Settings(_env_file=None, rerank="endpoint", rerank_base_url="ftp://x")  # type: ignore[call-arg]
    assert Settings(_env_file=None).rerank == "off"  # type: ignore[call-arg]


# the stage ---------------------------------------------------------------------------------------

class Fixed:
    """A reranker that answers a fixed order, or fails."""

    name = "fixed"

    def __init__(self, order: list[int] | None) -> None:
        self.order = order
        self.seen: list[list[str]] = []

    async def rerank(self, query: str, documents) -> list[Ranked]:
        self.seen.append(list(documents))
        if self.order is None:
            raise RerankUnavailable("down")
        return [Ranked(index, 10.0 - position) for position, index in enumerate(self.order)]

    async def close(self) -> None:
        pass


def hits(*scores: float) -> list[Hit]:
    return [Hit(f"p{index}", score, {"text": f"t{index}"}) for index, score in enumerate(scores)]


async def test_stage_keeps_the_score_scale_and_the_dropped_hits() -> None:
    reranker = Fixed([2, 0])  # index 1 left out: it follows in the store's order
    stage = RerankStage(reranker, candidates=30)
    assert stage.candidates(5) == 30 and stage.candidates(50) == 50
    result = await stage.apply("q", hits(0.9, 0.8, 0.7, 0.1), top_k=2, min_score=0.5)
    assert reranker.seen == [["t0", "t1", "t2"]]  # the 0.1 hit is no candidate
    assert [hit.point_id for hit in result] == ["p2", "p0"]
    assert [hit.score for hit in result] == [0.9, 0.8]
    assert result[0].payload["retrieval_score"] == 0.7 and result[0].payload["rerank_score"] == 10.0
    # below-minimum hits inside the store's own top_k are passed on for the merge to count
    many = await RerankStage(Fixed([1, 0]), 30).apply("q", hits(0.9, 0.1, 0.8), top_k=2, min_score=0.5)
    assert [hit.point_id for hit in many] == ["p2", "p0", "p1"]
    left_out = await RerankStage(Fixed([1]), 30).apply("q", hits(0.9, 0.8, 0.7), top_k=3, min_score=0.0)
    assert [hit.point_id for hit in left_out] == ["p1", "p0", "p2"]


async def test_stage_falls_back_to_the_store_order_and_counts_it() -> None:
    def fallbacks() -> float:
        return REGISTRY.get_sample_value("docent_rerank_fallbacks_total", {"reason": "RERANKER_UNAVAILABLE"}) or 0.0

    before = fallbacks()
    original = hits(0.9, 0.8, 0.7)
    result = await RerankStage(Fixed(None), 30).apply("q", original, top_k=2, min_score=0.0)
    assert result == original[:2]
    assert fallbacks() == before + 1


async def test_stage_off_is_a_no_op() -> None:
    stage = RerankStage(None, 30)
    original = hits(0.9, 0.1)
    assert stage.candidates(10) == 10
    assert await stage.apply("q", original, top_k=1, min_score=0.5) == original


# Search through the real service ---------------------------------------------------------------

@pytest.fixture(scope="module")
async def reranked_retrieval(embedder, standin: StandIn):
    settings = make_settings(rerank="endpoint", rerank_base_url=f"{standin.base}/live/boost:forecasts/v1",
                             rerank_model="stand-in", rerank_candidates=30, rerank_timeout_seconds=5.0,
                             rerank_max_retries=1)
    async with running_service(retrieval_service(settings, embedder=embedder), settings) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            yield retrieval_pb2_grpc.RetrievalServiceStub(channel), embedder


async def test_search_reranks_document_candidates(reranked_retrieval, standin: StandIn) -> None:
    stub, embedder = reranked_retrieval
    user = f"u-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, user, f"doc-facts-{user}")
    standin.live_mode = "ok"
    request = retrieval_pb2.SearchRequest(query="What was the Q3 revenue?", top_k=2,
                                          weights=retrieval_pb2.SourceWeights(documents=1.0, chat_history=0.0))
    plain_order = [result.text for result in (await stub.Search(
        request, metadata=auth(user), timeout=30)).results]
    assert len(plain_order) == 2
    path, body = standin.requests[-1]
    assert path.startswith("/live/") and body["model"] == "stand-in" and body["query"] == "What was the Q3 revenue?"
    # the reranker saw more than top_k candidates (all above the minimum score), in the store's order
    assert len(body["documents"]) > 2
    assert "Revenue forecasts for Q4" not in " ".join(body["documents"][:2])
    assert plain_order[0] == next(text for text in body["documents"] if "forecasts" in text)
    assert plain_order[1] == body["documents"][0]


async def test_search_with_the_reranker_down_keeps_the_dense_order(reranked_retrieval, standin: StandIn) -> None:
    stub, embedder = reranked_retrieval
    user = f"u-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, user, f"doc-facts-{user}")
    request = retrieval_pb2.SearchRequest(query="What was the Q3 revenue?", top_k=3,
                                          weights=retrieval_pb2.SourceWeights(documents=1.0, chat_history=0.0))
    standin.live_mode = "down"
    try:
        started = time.monotonic()
        reply = await stub.Search(request, metadata=auth(user), timeout=30)
        elapsed = time.monotonic() - started
    finally:
        standin.live_mode = "ok"
    assert elapsed < 5
    texts = [result.text for result in reply.results]
    assert len(texts) == 3 and "Q3 revenue was $5M" in texts[0]
    scores = [result.score for result in reply.results]
    assert scores == sorted(scores, reverse=True)


async def test_a_hanging_reranker_leaves_search_time_to_answer(reranked_retrieval, standin: StandIn) -> None:
    """A reranker timeout longer than the call's deadline: the attempt is cut so Search still answers."""
    stub, embedder = reranked_retrieval
    user = f"u-{uuid.uuid4().hex[:8]}"
    await index_facts(stub, embedder, user, f"doc-facts-{user}")
    request = retrieval_pb2.SearchRequest(query="How much revenue in Q3?")
    await stub.Search(request, metadata=auth(user), timeout=30)  # embeds the query
    standin.live_mode = "hang"
    before = standin.count("live")
    try:
        started = time.monotonic()
        # rerank_timeout_seconds is 5 with one retry: without the deadline this would take > 10 s
        reply = await stub.Search(request, metadata=auth(user), timeout=1.5)
        elapsed = time.monotonic() - started
    finally:
        standin.live_mode = "ok"
    assert 1.0 < elapsed < 1.5
    assert standin.count("live", settle=1.0) - before == 1  # no time was left for the retry
    assert len(reply.results) > 1 and "Q3 revenue was $5M" in reply.results[0].text
