"""Second-stage reranking of document hits: a `Reranker` port and the stage Search runs it in.

With DOCENT_RERANK on, Search fetches DOCENT_RERANK_CANDIDATES document hits from the store
instead of top_k, the reranker orders them, and the best top_k go on to the merge with chat
history. Chat-history hits are never reranked.

Implementations of the port:
- `EndpointReranker`: any server with the common `/rerank` API (llama.cpp's server, TEI, Infinity,
  Jina, Cohere): POST {model, query, documents, top_n} (or TEI's {query, texts}) → results
  [{index, relevance_score}] (TEI answers a bare list of {index, score}). Each attempt is bounded
  by DOCENT_RERANK_TIMEOUT_SECONDS, or by the Search call's remaining deadline (less 0.25 s to
  answer without reranking) if that is shorter;
  connection errors, timeouts, 408, 429 and 5xx are retried up to DOCENT_RERANK_MAX_RETRIES
  times; then it raises `RerankUnavailable` (UNAVAILABLE, reason RERANKER_UNAVAILABLE).
- No in-process ONNX cross-encoder: no PyPI package reachable here ships cross-encoder weights
  (bench/results/rerank-probe.md lists what was tried), and nothing may download weights at run time.

On a failing reranker the stage does not fail the search: it logs a warning, counts
docent_rerank_fallbacks_total{reason} and returns the store's own order (what Search returns
with reranking off). A search path should degrade to a slightly worse order rather than to an
error: the dense order alone already has recall@5 0.977 on the eval set, and chat turns call
Search, so an outage of an optional remote model would otherwise take chat down with it.

Scores: the merge orders documents against chat turns by weight × score and filters by the
minimum score, all on the retrieval score's scale, and a reranker's scores are on another one
(logits, or 0..1 probabilities). So the stage keeps the scale: candidates under the minimum
score are dropped first (as the merge would), the survivors are reordered by the reranker, and the
i-th reranked hit carries the i-th best retrieval score of the survivors. Within documents the
order is the reranker's; against chat history, documents compete with the same scores as before.
Each reranked hit's payload keeps `retrieval_score` (its own) and `rerank_score`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import httpx
import structlog
from prometheus_client import Counter, Histogram

from services.retrieval.store import Hit
from services.runtime.call_context import remaining_seconds
from services.runtime.config import Settings
from services.runtime.errors import Unavailable

log = structlog.get_logger("docent.retrieval.rerank")

RERANK_SECONDS = Histogram(
    "docent_rerank_seconds", "Reranking of the document candidates of one search", ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RERANK_FALLBACKS = Counter(
    "docent_rerank_fallbacks_total", "Searches that kept the store's order because the reranker failed", ["reason"],
)
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_BACKOFF_SECONDS = 0.1
_BACKOFF_CAP_SECONDS = 1.0
# left of the Search call's deadline for answering in the store's order when the reranker fails
_DEADLINE_RESERVE_SECONDS = 0.25


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float


class RerankUnavailable(Unavailable):
    reason = "RERANKER_UNAVAILABLE"


class Reranker(Protocol):
    name: str

    async def rerank(self, query: str, documents: Sequence[str]) -> list[Ranked]:
        """Indexes into `documents`, best first; each index at most once (some may be missing)."""

    async def close(self) -> None: ...


def rerank_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/rerank") else f"{base}/rerank"


def parse_results(body: object, count: int) -> list[Ranked]:
    """[{index, relevance_score}] under "results" (Jina, Cohere, llama.cpp, Infinity) or TEI's bare list."""
    items = body.get("results") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ValueError("the reply has no results list")
    ranked: list[Ranked] = []
    seen: set[int] = set()
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("a result is not an object")
        index, score = item.get("index"), item.get("relevance_score", item.get("score"))
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count or index in seen:
            raise ValueError(f"result index {index!r} is not a new index below {count}")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ValueError(f"result {index} has no numeric score")
        seen.add(index)
        ranked.append(Ranked(index, float(score)))
    ranked.sort(key=lambda entry: -entry.score)
    return ranked


class EndpointReranker:
    """The /rerank HTTP API, with a per-attempt time bound and bounded retries."""

    name = "endpoint"

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not settings.rerank_base_url:
            raise ValueError("DOCENT_RERANK_BASE_URL is not set")
        self.url = rerank_url(settings.rerank_base_url)
        self.model = settings.rerank_model
        self.request_format = settings.rerank_request_format
        self.timeout = settings.rerank_timeout_seconds
        self.max_retries = settings.rerank_max_retries
        headers = {"accept": "application/json"}
        if settings.rerank_api_key:
            headers["authorization"] = f"Bearer {settings.rerank_api_key.get_secret_value()}"
        self._headers = headers
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _body(self, query: str, documents: Sequence[str]) -> dict[str, object]:
        if self.request_format == "texts":  # TEI: no model, no top_n; truncate rather than answer 413
            return {"query": query, "texts": list(documents), "truncate": True}
        body: dict[str, object] = {"query": query, "documents": list(documents), "top_n": len(documents)}
        if self.model:
            body["model"] = self.model
        return body

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self.timeout, transport=self._transport)
        return self._client

    async def rerank(self, query: str, documents: Sequence[str]) -> list[Ranked]:
        if not documents:
            return []
        body = self._body(query, documents)
        attempts = self.max_retries + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(_BACKOFF_SECONDS * 2 ** (attempt - 1), _BACKOFF_CAP_SECONDS))
            # a hard bound per attempt (httpx's timeout is per read: a trickling server could outlast
            # it), and never past the deadline of the Search call this serves
            budget = min(self.timeout, remaining_seconds(self.timeout + _DEADLINE_RESERVE_SECONDS)
                         - _DEADLINE_RESERVE_SECONDS)
            if budget < 0.01:
                problem = "no time left before the deadline"
                break
            try:
                async with asyncio.timeout(budget):
                    reply = await self._http().post(self.url, json=body)
            except (TimeoutError, httpx.TimeoutException):
                problem = f"no reply within {budget:.3g}s"
                continue
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            if reply.status_code in _RETRY_STATUS:
                problem = f"HTTP {reply.status_code}"
                continue
            if reply.status_code != 200:
                raise RerankUnavailable(f"reranker at {self.url} answered HTTP {reply.status_code}",
                                        status=reply.status_code, attempts=attempt + 1)
            try:
                return parse_results(reply.json(), len(documents))
            except ValueError as error:  # json.JSONDecodeError is a ValueError too
                raise RerankUnavailable(f"reranker at {self.url} sent an unusable reply: {error}",
                                        attempts=attempt + 1) from None
        raise RerankUnavailable(f"reranker at {self.url} failed {attempt + 1} time(s), last: {problem}",
                                attempts=attempt + 1)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def create_reranker(settings: Settings) -> Reranker | None:
    if settings.rerank == "endpoint":
        return EndpointReranker(settings)
    return None


class RerankStage:
    """What Search calls: how many document candidates to fetch, and their reranking."""

    def __init__(self, reranker: Reranker | None, candidates: int) -> None:
        self.reranker = reranker
        self._candidates = candidates

    @classmethod
    def from_settings(cls, settings: Settings) -> RerankStage:
        return cls(create_reranker(settings), settings.rerank_candidates)

    def candidates(self, top_k: int) -> int:
        return max(top_k, self._candidates) if self.reranker is not None else top_k

    async def apply(self, query: str, hits: Sequence[Hit], *, top_k: int, min_score: float) -> list[Hit]:
        """The best top_k of `hits` by the reranker (see the module docstring); the store's order on failure.

        Hits under `min_score` within the store's own top_k are appended after the reranked ones,
        so the merge drops and counts them exactly as it does with reranking off.
        """
        if self.reranker is None:
            return list(hits)
        relevant = [hit for hit in hits if hit.score >= min_score]
        below = [hit for hit in hits[:top_k] if hit.score < min_score]
        if len(relevant) < 2:
            return relevant[:top_k] + below
        started = time.perf_counter()
        try:
            ranked = await self.reranker.rerank(query, [str(hit.payload.get("text", "")) for hit in relevant])
        except Exception as error:  # any failure of an optional stage: keep the store's order
            reason = getattr(error, "reason", type(error).__name__)
            RERANK_FALLBACKS.labels(reason=reason).inc()
            log.warning("rerank_failed_using_store_order", reranker=self.reranker.name, reason=reason,
                        error=str(error), candidates=len(relevant))
            return list(hits[:top_k])
        finally:
            RERANK_SECONDS.labels(backend=self.reranker.name).observe(time.perf_counter() - started)
        # indexes the reranker left out (a top_n below the count) follow in the store's order
        listed = {entry.index for entry in ranked}
        order = [*ranked, *(Ranked(index, float("-inf")) for index in range(len(relevant)) if index not in listed)]
        scores = sorted((hit.score for hit in relevant), reverse=True)
        reranked = [
            replace(relevant[entry.index], score=scores[position],
                    payload={**relevant[entry.index].payload, "retrieval_score": relevant[entry.index].score,
                             "rerank_score": entry.score})
            for position, entry in enumerate(order[:top_k])
        ]
        return reranked + below

    async def close(self) -> None:
        if self.reranker is not None:
            await self.reranker.close()
