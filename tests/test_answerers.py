"""The answerers, the follow-up rewrite and the history budget, without the gRPC stack.

The LLM answerer talks to a real OpenAI-compatible HTTP server that the test runs on loopback
(`FakeLLM`, also used by test_chat_service): it records each request and answers with SSE
streaming, an HTTP error, or too late.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from services.chat.answer import NOT_FOUND_ANSWER, AnswerRequest, DocumentBlock, Memory, citations, cited_markers
from services.chat.answer_extractive import CHAT_PREFIX, HISTORY_PREFIX, ExtractiveAnswerer, compose
from services.chat.answer_llm import LLMAnswerer, LLMClient, build_messages
from services.chat.history import HistoryTurn, within_budget
from services.chat.rewrite import Rewriter, is_follow_up, rule_rewrite
from services.chat.text import sentences
from services.runtime.errors import Unavailable
from tests.conftest import free_port, make_settings

REPORT = [
    "Q3 revenue was $5M, driven by enterprise subscriptions. The sales team closed 14 new accounts.",
    "Q2 revenue was $4.2M after the spring price change. Churn stayed flat.",
    "Profit margins improved to 18% in Q3. Costs fell because of the new data centre.",
    "Employees get 25 days of paid vacation per year.",
]


def blocks(texts: list[str] = REPORT, scores: list[float] | None = None) -> list[DocumentBlock]:
    scores = scores or [0.7 - 0.05 * index for index in range(len(texts))]
    return [DocumentBlock(marker=index + 1, text=text, score=scores[index], document_id="doc-1",
                          filename="report.pdf", chunk_index=index, page_start=index + 1, page_end=index + 1)
            for index, text in enumerate(texts)]


def answer_of(request: AnswerRequest) -> str:
    return " ".join(compose(request))


def copied_from_context(answer: str, request: AnswerRequest) -> bool:
    """Every sentence of the answer, minus markers and framing, appears verbatim in the context."""
    sources = " ".join([*(block.text for block in request.documents),
                        *(memory.assistant_message for memory in request.memories),
                        *(turn.answer for turn in request.history)])
    for piece in compose(request):
        body = piece.rsplit(" [", 1)[0] if piece.endswith("]") else piece
        body = body.removeprefix(CHAT_PREFIX).removeprefix(HISTORY_PREFIX)
        if body != NOT_FOUND_ANSWER and body not in sources:
            return False
    return True


# the extractive answerer ----------------------------------------------------------------------

def test_extractive_quotes_the_fact_with_its_marker() -> None:
    request = AnswerRequest(query="What is our Q3 revenue?", standalone_query="What is our Q3 revenue?",
                            documents=blocks())
    answer = answer_of(request)
    # the answering sentence and the rest of its paragraph, one passage, one citation
    assert answer == ("Q3 revenue was $5M, driven by enterprise subscriptions. "
                      "The sales team closed 14 new accounts. [1]")
    assert copied_from_context(answer, request)
    # sources: every passage the answerer was given, in rank order; the cited one flagged
    sources = citations(answer, request.documents, request.query)
    assert [(c.marker, c.cited) for c in sources] == [(1, True), (2, False), (3, False), (4, False)]
    assert sources[0].chunk_index == 0 and sources[0].snippet.startswith("Q3 revenue was $5M")
    # an uncited source's snippet is its passage that matches the question best
    assert "Q3" in sources[2].snippet


def test_extractive_follow_up_uses_carried_terms_but_prefers_the_new_ones() -> None:
    history = [HistoryTurn("t1", "What is our Q3 revenue?", "What is our Q3 revenue?",
                           "Q3 revenue was $5M, driven by enterprise subscriptions. [1]")]
    standalone = rule_rewrite("How does that compare to Q2?", history)
    request = AnswerRequest(query="How does that compare to Q2?", standalone_query=standalone, history=history,
                            documents=blocks())
    pieces = compose(request)
    assert pieces[0] == "Q2 revenue was $4.2M after the spring price change."
    assert " ".join(pieces).startswith("Q2 revenue was $4.2M after the spring price change. Churn stayed flat. [2]")
    # a comparison quotes the other side too: the Q3 figure, once, from the document, not the earlier answer
    assert any(piece.startswith("Q3 revenue was $5M") for piece in pieces) and pieces[-1].endswith("[1]")
    assert not any(piece.startswith(CHAT_PREFIX) for piece in pieces)
    profit = AnswerRequest(query="and the profit?", standalone_query=rule_rewrite("and the profit?", history),
                           history=history, documents=blocks())
    assert " ".join(compose(profit)).startswith("Profit margins improved to 18% in Q3.")
    assert compose(profit)[-1].endswith("[3]")


def test_extractive_says_plainly_when_nothing_is_relevant() -> None:
    # scores as the MiniLM model gives them for this question and these passages
    nothing = AnswerRequest(query="Who is the CEO of Acme?", standalone_query="Who is the CEO of Acme?",
                            documents=blocks(scores=[0.22, 0.17, 0.07, 0.21]))
    assert compose(nothing) == [NOT_FOUND_ANSWER]
    # no shared word, but a passage very close in meaning (cosine 0.59) is offered as the closest one
    holidays = AnswerRequest(query="How many holidays do staff have?",
                             standalone_query="How many holidays do staff have?",
                             documents=blocks([REPORT[3], REPORT[0]], scores=[0.59, 0.23]))
    assert compose(holidays) == ["The closest passage I found: Employees get 25 days of paid vacation per year. [1]"]
    assert compose(AnswerRequest(query="anything at all", standalone_query="anything at all")) == [NOT_FOUND_ANSWER]
    # the passages are still the sources (the context the user can check), none of them cited
    assert [c.cited for c in citations(NOT_FOUND_ANSWER, blocks())] == [False] * 4


def test_extractive_quotes_an_earlier_conversation_without_citing_it() -> None:
    memory = Memory(turn_id="t0", conversation_id="c0", user_message="What is our Q3 revenue?",
                    assistant_message="Q3 revenue was $5M, driven by enterprise subscriptions. [1]", score=0.8)
    request = AnswerRequest(query="what did we say about Q3 revenue?",
                            standalone_query="what did we say about Q3 revenue?", memories=[memory])
    assert compose(request) == [CHAT_PREFIX + "Q3 revenue was $5M, driven by enterprise subscriptions."]
    assert request.uses_chat_history
    assert citations(answer_of(request), []) == []
    # this conversation's own earlier answer, when no document has it
    history = [HistoryTurn("t1", "Who approved the budget?", "Who approved the budget?",
                           "The budget was approved by the board on 3 March. [2]")]
    again = AnswerRequest(query="When was the budget approved?", standalone_query="When was the budget approved?",
                          history=history, documents=blocks())
    assert compose(again) == [HISTORY_PREFIX + "The budget was approved by the board on 3 March."]
    assert copied_from_context(answer_of(again), again)


def test_extractive_is_fast_and_streams_sentences() -> None:
    many = blocks([" ".join(REPORT)] * 10)
    request = AnswerRequest(query="What is our Q3 revenue?", standalone_query="What is our Q3 revenue?",
                            documents=many)
    started = time.perf_counter()
    for _ in range(20):
        compose(request)
    assert (time.perf_counter() - started) / 20 < 0.02

    async def collect() -> list[str]:
        return [piece async for piece in ExtractiveAnswerer().stream(request)]

    pieces = asyncio.run(collect())
    assert "".join(pieces) == answer_of(request) and len(pieces) >= 1


def test_sentence_splitting_keeps_figures_and_abbreviations() -> None:
    text = "Revenue was $4.2M in Q2.\nIt rose, e.g. in Europe. Costs\nfell 3.5% overall! Next"
    assert sentences(text) == ["Revenue was $4.2M in Q2.", "It rose, e.g. in Europe.", "Costs fell 3.5% overall!",
                               "Next"]


def test_cited_markers_and_cited_flags() -> None:
    assert cited_markers("A [2]. B [1, 3]. C [2][9]") == [2, 1, 3, 9]
    documents = blocks()
    # a marker with no block ([9]) flags nothing; sources stay in rank order
    assert [(c.marker, c.cited) for c in citations("A [2]. B [9]", documents)] == [
        (1, False), (2, True), (3, False), (4, False)]
    # an LLM that ignored the citation instruction: every block is a source, none claimed as cited
    assert [c.cited for c in citations("Revenue grew.", documents)] == [False] * 4


def test_adjacent_chunks_collapse_into_one_source_with_a_page_range() -> None:
    from docent.v1 import retrieval_pb2
    from services.chat.answer import context_from_search

    def hit(chunk: int, pages: tuple[int, int], text: str, score: float) -> retrieval_pb2.SearchResult:
        return retrieval_pb2.SearchResult(
            source=retrieval_pb2.SEARCH_SOURCE_DOCUMENTS, score=score, text=text,
            document=retrieval_pb2.DocumentChunkHit(document_id="d", filename="m.pdf", chunk_index=chunk,
                                                    page_start=pages[0], page_end=pages[1]))

    # chunk 5 opens with chunk 4's last sentence (the overlap); chunk 6 joins them; chunk 9 is far away;
    # chunk 10 follows chunk 9 but starts a new page: a source of its own, so its page stays exact
    results = [hit(5, (3, 3), "Shared sentence here. Second half of the answer.", 0.8),
               hit(9, (7, 7), "Something else entirely.", 0.7),
               hit(4, (2, 3), "First half. Shared sentence here.", 0.6),
               hit(6, (3, 4), "Third part.", 0.5),
               hit(10, (8, 8), "A new page.", 0.4)]
    context = context_from_search(results)
    assert [(b.marker, b.chunk_index, b.last_chunk, b.page_start, b.page_end) for b in context.documents] == [
        (1, 4, 6, 2, 4), (2, 9, 9, 7, 7), (3, 10, 10, 8, 8)]
    assert context.documents[0].text == "First half. Shared sentence here. Second half of the answer.\n\nThird part."
    assert context.documents[0].score == pytest.approx(0.8)
    assert [c.chunk_index_end for c in citations("x [1]", context.documents)] == [6, 9, 10]


def test_extractive_answers_an_faq_entry_from_its_opening() -> None:
    entry = ("# How do I delete a file?\n*Library FAQ*\nUse `os.remove(filename)` or `os.unlink(filename)`. "
             "For a whole tree use shutil.rmtree. Deleting a file you do not own raises PermissionError.\n"
             "# How do I copy a file?\nThe shutil module contains a copyfile() function.")
    other = "Files can be deleted, renamed and copied with many modules; deleting a file is permanent."
    request = AnswerRequest(query="How can I delete a file in Python?", standalone_query="How can I delete a file?",
                            documents=blocks([other, entry], scores=[0.62, 0.6]))
    answer = answer_of(request)
    # the question line is not an answer; the entry's first sentences are, from the passage that has them
    assert answer.startswith("Use `os.remove(filename)` or `os.unlink(filename)`.") and cited_markers(answer)[0] == 2
    assert "copyfile" not in answer and "How do I" not in answer


# rewrite and history -------------------------------------------------------------------------

def test_rule_rewrite_carries_the_previous_subject() -> None:
    history = [HistoryTurn("t1", "What is our Q3 revenue?", "What is our Q3 revenue?", "…")]
    assert rule_rewrite("How does that compare to Q2?", history) == "Q2 Q3 revenue"
    assert rule_rewrite("and the profit?", history) == "profit Q3 revenue"
    assert rule_rewrite("What is the vacation policy?", history) == "What is the vacation policy?"
    assert rule_rewrite("and the profit?", []) == "and the profit?"
    # a chain of follow-ups keeps its subject through the previous standalone query
    chained = [*history, HistoryTurn("t2", "and the profit?", "profit Q3 revenue", "…")]
    assert rule_rewrite("what about Q4?", chained) == "Q4 profit Q3 revenue"
    assert is_follow_up("What about Q2?") and not is_follow_up("Who leads the marketing team?")


def test_history_keeps_the_newest_turns_within_the_budget() -> None:
    turns = [HistoryTurn(str(index), f"question {index}", f"question {index}", "word " * 50)
             for index in range(10)]
    newest_first = list(reversed(turns))
    count = lambda text: len(text.split())  # noqa: E731
    kept = within_budget(newest_first, 160, count)
    assert [turn.id for turn in kept] == ["7", "8", "9"]
    assert within_budget(newest_first, 0, count) == []
    # the newest turn is kept even when it alone is over the budget, its answer shortened
    (only,) = within_budget(newest_first, 20, count)
    assert only.id == "9" and len(only.answer) < len(turns[9].answer)


# the LLM answerer against a local OpenAI-compatible server ------------------------------------

@dataclass
class FakeLLM:
    """A minimal OpenAI-compatible /v1/chat/completions on loopback."""

    base_url: str
    requests: list[dict] = field(default_factory=list)
    mode: str = "ok"  # ok | error | slow | strict (an older server: HTTP 400 on stream_options)
    answer: Callable[[dict], str] = lambda body: "Q3 revenue was $5M [1]."
    rewrite: str = ""
    delay: float = 2.0

    def pieces(self, text: str) -> list[str]:
        words = text.split(" ")
        return [word if index == 0 else f" {word}" for index, word in enumerate(words)]


def _app(fake: FakeLLM) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await request.json()
        fake.requests.append(body)
        if fake.mode == "error":
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503)
        if fake.mode == "slow":
            await asyncio.sleep(fake.delay)
        if fake.mode == "strict" and "stream_options" in body:
            return JSONResponse({"error": {"message": "Unrecognized request argument supplied: stream_options",
                                           "type": "invalid_request_error"}}, status_code=400)
        model = body.get("model", "")
        if not body.get("stream"):
            return JSONResponse({
                "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": fake.rewrite or fake.answer(body)}}]})

        async def events() -> AsyncIterator[str]:
            for piece in fake.pieces(fake.answer(body)):
                chunk = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            done = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(done)}\n\n"
            # as OpenAI and llama.cpp's server do: usage only when asked, in a last chunk without choices
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = sum(len(message["content"].split()) for message in body["messages"])
                completion = len(fake.pieces(fake.answer(body)))
                usage = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                         "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                  "total_tokens": prompt + completion}}
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextlib.asynccontextmanager
async def fake_llm() -> AsyncIterator[FakeLLM]:
    port = free_port()
    fake = FakeLLM(base_url=f"http://127.0.0.1:{port}/v1")
    server = uvicorn.Server(uvicorn.Config(_app(fake), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield fake
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def llm_client(base_url: str, **overrides: object) -> LLMClient:
    values: dict[str, object] = {"llm_base_url": base_url, "llm_model": "test-model", "llm_api_key": "sk-test",
                                 "llm_timeout_seconds": 5, "llm_max_retries": 0}
    values.update(overrides)
    return LLMClient.from_settings(make_settings(**values))


async def test_llm_answerer_streams_and_sends_a_grounded_prompt() -> None:
    request = AnswerRequest(
        query="How does that compare to Q2?", standalone_query="Q2 Q3 revenue",
        history=[HistoryTurn("t1", "What is our Q3 revenue?", "What is our Q3 revenue?", "It was $5M [1].")],
        documents=blocks()[:2],
        memories=[Memory("t0", "c0", "old question", "old answer [4]", 0.5)])
    async with fake_llm() as fake:
        fake.answer = lambda body: "Q2 revenue was $4.2M [2], below Q3's $5M [1]."
        answerer = LLMAnswerer(llm_client(fake.base_url))
        pieces = [piece async for piece in answerer.stream(request)]
        await answerer.close()
    assert len(pieces) > 3 and "".join(pieces) == "Q2 revenue was $4.2M [2], below Q3's $5M [1]."
    (sent,) = fake.requests
    assert sent["model"] == "test-model" and sent["stream"] is True
    messages = sent["messages"]
    assert messages == build_messages(request)
    assert messages[0]["role"] == "system" and "cite" in messages[0]["content"]
    assert "couldn't find" in messages[0]["content"]
    # history as prior messages, without the old markers; the blocks numbered; memories not citable
    assert messages[1] == {"role": "user", "content": "What is our Q3 revenue?"}
    assert messages[2] == {"role": "assistant", "content": "It was $5M."}
    final = messages[-1]["content"]
    assert "[1] (report.pdf, page 1)\nQ3 revenue was $5M" in final and "[2] (report.pdf, page 2)" in final
    assert "not sources, do not cite" in final and "old answer" in final and "[4]" not in final
    assert final.endswith("Question: How does that compare to Q2?")
    assert [c.marker for c in citations("".join(pieces), request.documents) if c.cited] == [1, 2]


def llm_counter(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_streamed_answer_asks_for_its_token_usage_and_records_it() -> None:
    """Against a real HTTP server speaking the OpenAI streaming protocol: the request carries
    stream_options.include_usage, the final chunk without choices does not disturb the text, and its
    usage moves the token counters and lands on the llm.chat span."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.runtime import tracing

    request = AnswerRequest(query="What is our Q3 revenue?", standalone_query="Q3 revenue", documents=blocks()[:1])
    tracing.shutdown_tracing()
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("test", exporter=exporter)
    try:
        async with fake_llm() as fake:
            before = {kind: llm_counter("docent_llm_tokens_total", kind=kind) for kind in ("prompt", "completion")}
            answerer = LLMAnswerer(llm_client(fake.base_url))
            pieces = [piece async for piece in answerer.stream(request)]
            await answerer.close()
    finally:
        tracing.shutdown_tracing()
    assert "".join(pieces) == "Q3 revenue was $5M [1]."
    (sent,) = fake.requests
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    prompt = sum(len(message["content"].split()) for message in sent["messages"])
    assert llm_counter("docent_llm_tokens_total", kind="prompt") == before["prompt"] + prompt
    assert llm_counter("docent_llm_tokens_total", kind="completion") == before["completion"] + len(pieces)
    (span,) = [span for span in exporter.get_finished_spans() if span.name == "llm.chat"]
    assert span.attributes["gen_ai.usage.input_tokens"] == prompt
    assert span.attributes["gen_ai.usage.output_tokens"] == len(pieces)


async def test_an_endpoint_that_rejects_stream_options_fails_visibly_unless_it_is_turned_off() -> None:
    """The decision for older servers: no silent second request. The default fails as LLM_REJECTED (HTTP 400,
    the server's message logged); DOCENT_LLM_STREAM_USAGE=false works and counts no tokens."""
    request = AnswerRequest(query="q", standalone_query="q", documents=blocks()[:1])
    async with fake_llm() as fake:
        fake.mode = "strict"
        answerer = LLMAnswerer(llm_client(fake.base_url))
        with pytest.raises(Unavailable) as raised:
            [piece async for piece in answerer.stream(request)]
        await answerer.close()
        assert raised.value.reason == "LLM_REJECTED" and len(fake.requests) == 1
        before = llm_counter("docent_llm_tokens_total", kind="completion")
        answerer = LLMAnswerer(llm_client(fake.base_url, llm_stream_usage=False))  # DOCENT_LLM_STREAM_USAGE
        assert "".join([piece async for piece in answerer.stream(request)]) == "Q3 revenue was $5M [1]."
        await answerer.close()
        assert "stream_options" not in fake.requests[-1] and len(fake.requests) == 2
    assert llm_counter("docent_llm_tokens_total", kind="completion") == before


@pytest.mark.parametrize(("mode", "retries", "reason", "attempts"), [
    ("error", 1, "LLM_UNAVAILABLE", 2),
    ("slow", 0, "LLM_TIMEOUT", 1),
])
async def test_llm_failures_become_unavailable(mode: str, retries: int, reason: str, attempts: int) -> None:
    request = AnswerRequest(query="q", standalone_query="q", documents=blocks()[:1])
    async with fake_llm() as fake:
        fake.mode = mode
        fake.delay = 1.5
        answerer = LLMAnswerer(llm_client(fake.base_url, llm_timeout_seconds=0.5, llm_max_retries=retries))
        with pytest.raises(Unavailable) as raised:
            [piece async for piece in answerer.stream(request)]
        await answerer.close()
    assert raised.value.reason == reason and raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(fake.requests) == attempts


async def test_llm_unreachable_and_llm_rewrite() -> None:
    answerer = LLMAnswerer(llm_client(f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(Unavailable) as raised:
        [piece async for piece in answerer.stream(AnswerRequest(query="q", standalone_query="q"))]
    assert raised.value.reason == "LLM_UNAVAILABLE"
    await answerer.close()
    history = [HistoryTurn("t1", "What is our Q3 revenue?", "What is our Q3 revenue?", "It was $5M [1].")]
    async with fake_llm() as fake:
        client = llm_client(fake.base_url)
        fake.rewrite = '"How does Q3 revenue compare to Q2 revenue?"'
        assert await Rewriter(client).standalone("How does that compare to Q2?", history) == \
            "How does Q3 revenue compare to Q2 revenue?"
        assert fake.requests[-1]["stream"] is False and "Latest message: How does that compare to Q2?" in \
            fake.requests[-1]["messages"][-1]["content"]
        fake.rewrite = "x" * 2000  # unusable: the rule takes over
        assert await Rewriter(client).standalone("and the profit?", history) == "profit Q3 revenue"
        # no history: no LLM call at all
        before = len(fake.requests)
        assert await Rewriter(client).standalone("What is our Q3 revenue?", []) == "What is our Q3 revenue?"
        assert len(fake.requests) == before
        await client.close()


def test_real_follow_up_moves_to_the_new_subject_and_snippets_show_the_quote(embedder) -> None:
    """On the real R manual: "And what about SPSS files?" after a Stata answer is about SPSS."""
    import numpy as np

    from services.ingest.chunk import chunk_pages
    from services.ingest.parse import iter_pages
    from services.runtime.embeddings import Tokenizer
    from tests.conftest import TESTDATA

    pages = iter_pages((TESTDATA / "R-data_41p.pdf").read_bytes(), "application/pdf")
    chunks = list(chunk_pages(pages, Tokenizer.shared().count, max_tokens=200, overlap_tokens=30))
    vectors = embedder.embed([chunk.text for chunk in chunks])

    def retrieved(query: str) -> list[DocumentBlock]:
        scores = vectors @ embedder.embed([query])[0]
        best = np.argsort(-scores)[:7]
        return [DocumentBlock(marker=rank + 1, text=chunks[index].text, score=float(scores[index]),
                              document_id="r-data", filename="R-data_41p.pdf", chunk_index=chunks[index].index,
                              page_start=chunks[index].page_start, page_end=chunks[index].page_end)
                for rank, index in enumerate(best)]

    first_question = "Which Stata file versions can R's read.dta and write.dta handle?"
    first = AnswerRequest(query=first_question, standalone_query=first_question, documents=retrieved(first_question))
    first_answer = answer_of(first)
    assert "versions 5 up to 12 of Stata" in first_answer
    stata_sentence = next(s for s in sentences(first_answer) if "versions 5 up to 12" in s)
    source = next(c for c in citations(first_answer, first.documents) if c.cited)
    assert stata_sentence in source.snippet  # the snippet shows the quoted passage, not the chunk's start
    assert source.page_start <= 20 <= source.page_end or source.page_start == 19

    history = [HistoryTurn("t1", first_question, first_question, first_answer)]
    follow_up = "And what about SPSS files?"
    standalone = rule_rewrite(follow_up, history)
    second = AnswerRequest(query=follow_up, standalone_query=standalone, history=history,
                           documents=retrieved(standalone))
    pieces = compose(second)
    assert "SPSS" in pieces[0]
    assert not any(stata_sentence in piece for piece in pieces)  # not repeated
    assert copied_from_context(" ".join(pieces), second)


def test_a_follow_up_about_the_follow_up_keeps_the_subject_and_moves_on() -> None:
    first = "What is our Q3 revenue?"
    history = [HistoryTurn("t1", first, first, answer_of(AnswerRequest(query=first, standalone_query=first,
                                                                        documents=blocks())))]
    second = rule_rewrite("and Q2?", history)
    second_answer = answer_of(AnswerRequest(query="and Q2?", standalone_query=second, history=history,
                                            documents=blocks()))
    assert second_answer.startswith("Q2 revenue was $4.2M")
    history.append(HistoryTurn("t2", "and Q2?", second, second_answer))
    third = rule_rewrite("and what drove it?", history)
    assert "Q2" in third and "revenue" in third  # the chain keeps the subject of the follow-up
    third_answer = answer_of(AnswerRequest(query="and what drove it?", standalone_query=third, history=history,
                                           documents=blocks()))
    assert "spring price change" in third_answer and "[2]" in third_answer
