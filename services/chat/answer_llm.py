"""Answers from any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, llama.cpp).

The prompt gives the document passages as numbered blocks [1]..[n] and asks the model to cite
them and to say so when they do not hold the answer; this conversation's recent turns go in as
prior messages, and turns found in earlier conversations as notes that are not to be cited.
Tokens are streamed as they arrive. Any upstream failure (refused connection, timeout after the
configured retries, an HTTP error, a broken stream) becomes UNAVAILABLE with a reason.

Token usage of a streamed answer: OpenAI-compatible servers report it only when the request asks with
`stream_options={"include_usage": true}` (OpenAI's API since 2024); the stream then ends with one extra
chunk whose `choices` is empty and whose `usage` holds the prompt and completion tokens. llama.cpp's
server (xllamacpp 2026.10) does exactly that, and without the option sends no usage at all. Docent always
asks: servers that predate the option generally ignore request fields they do not know. One that rejects it
with HTTP 400 instead fails the call as LLM_REJECTED, with the server's message in the `llm_failed` log
line; that is reported, not papered over with a second request without the option.
DOCENT_LLM_STREAM_USAGE=false (`LLMClient(..., stream_usage=False)`) leaves the option out for such an endpoint.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai
import structlog
from openai import AsyncOpenAI
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram

from services.chat.answer import AnswerRequest
from services.chat.history import HistoryTurn
from services.chat.text import shorten, strip_markers
from services.runtime import tracing
from services.runtime.call_context import remaining_seconds
from services.runtime.config import Settings
from services.runtime.errors import Unavailable

log = structlog.get_logger("docent.chat.llm")

# on the chat service's metrics port
LLM_LATENCY = Histogram(
    "docent_llm_request_seconds", "LLM chat-completion calls: request → last token (stream) or the reply (complete)",
    ["call", "outcome"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
LLM_TOKENS = Counter("docent_llm_tokens", "Tokens of LLM calls, from the response's usage when the endpoint reports it",
                     ["kind"])
LLM_ERRORS = Counter("docent_llm_errors", "LLM calls that failed, by reason (LLM_TIMEOUT, LLM_UNAVAILABLE, …)",
                     ["reason"])

ANSWER_TEMPERATURE = 0.1
ANSWER_MAX_TOKENS = 1024
MEMORY_CHARS = 600

SYSTEM_PROMPT = (
    "You are Docent, an assistant that answers questions about the user's own documents.\n"
    "Answer only from the numbered context blocks in the user's message. After each statement, cite the "
    "block(s) it comes from by their number in square brackets, like [1] or [2][3].\n"
    "If the context blocks do not contain the answer, say plainly that you couldn't find it in the "
    "documents; do not guess and do not use outside knowledge.\n"
    "Notes from earlier conversations may help you understand the question, but they are not sources: "
    "never cite them.\n"
    "Be concise."
)


class LLMClient:
    """One AsyncOpenAI client per process, with the configured timeout and retries."""

    def __init__(self, client: AsyncOpenAI, model: str, *, stream_usage: bool = True) -> None:
        self.client = client
        self.model = model
        # ask streamed calls for their token usage (stream_options.include_usage): see the module docstring
        self.stream_usage = stream_usage

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient:
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "unused"
        client = AsyncOpenAI(base_url=settings.llm_base_url, api_key=api_key, timeout=settings.llm_timeout_seconds,
                             max_retries=settings.llm_max_retries)
        return cls(client, settings.llm_model, stream_usage=settings.llm_stream_usage)

    def _timeout(self) -> float:
        """Per attempt: the configured timeout, or less when the user request's deadline is nearer. The
        client's own retries (1 + DOCENT_LLM_MAX_RETRIES attempts) are the only ones (docs/RELIABILITY.md)."""
        configured = self.client.timeout
        return remaining_seconds(configured if isinstance(configured, (int, float)) else 60.0)

    def _span_attributes(self, params: dict[str, Any], streamed: bool) -> dict[str, Any]:
        return {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": self.model,
                "gen_ai.request.max_tokens": params.get("max_tokens"),
                "gen_ai.request.temperature": params.get("temperature"), "docent.llm.stream": streamed}

    async def stream(self, messages: Sequence[dict[str, str]], **params: Any) -> AsyncIterator[str]:
        """The completion's text pieces as they arrive."""
        # not made current: the consumer runs between our yields, its spans are not the LLM call's children
        span = tracing.start_span("llm.chat", self._span_attributes(params, True))
        started, outcome, usage = time.perf_counter(), "cancelled", None
        if self.stream_usage:
            params = {"stream_options": {"include_usage": True}, **params}
        try:
            stream = await self.client.chat.completions.create(
                model=self.model, messages=list(messages), stream=True, timeout=self._timeout(),
                **params)  # type: ignore[arg-type]
            async with stream:
                async for chunk in stream:
                    # the last chunk's: with include_usage a final chunk with no choices carries it (some servers
                    # repeat a running total on every chunk, so the latest one wins)
                    usage = getattr(chunk, "usage", None) or usage
                    for choice in chunk.choices or ():  # empty on that final usage chunk
                        content = choice.delta.content if choice.delta else None
                        if content:
                            yield content
            outcome = "ok"
        except openai.OpenAIError as error:
            outcome = "error"
            failure = llm_unavailable(error)
            span.set_status(Status(StatusCode.ERROR, failure.reason))
            raise failure from None
        finally:
            _observe("stream", outcome, started, usage, span)

    async def complete(self, messages: Sequence[dict[str, str]], **params: Any) -> str:
        started = time.perf_counter()
        with tracing.span("llm.chat", self._span_attributes(params, False)) as span:
            try:
                reply = await self.client.chat.completions.create(
                    model=self.model, messages=list(messages), stream=False, timeout=self._timeout(),
                    **params)  # type: ignore[arg-type]
            except openai.OpenAIError as error:
                failure = llm_unavailable(error)
                span.set_status(Status(StatusCode.ERROR, failure.reason))
                _observe("complete", "error", started, None, None)
                raise failure from None
            _observe("complete", "ok", started, getattr(reply, "usage", None), None)
            _record_usage(span, getattr(reply, "usage", None))
        if not reply.choices:
            return ""
        return reply.choices[0].message.content or ""

    async def close(self) -> None:
        await self.client.close()


def _observe(call: str, outcome: str, started: float, usage: Any, span: Any) -> None:
    """Latency and tokens of one LLM call; ends `span` when given (the streamed call's)."""
    LLM_LATENCY.labels(call, outcome).observe(time.perf_counter() - started)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if isinstance(prompt, int):
        LLM_TOKENS.labels("prompt").inc(prompt)
    if isinstance(completion, int):
        LLM_TOKENS.labels("completion").inc(completion)
    if span is not None:
        _record_usage(span, usage)
        span.end()


def _record_usage(span: Any, usage: Any) -> None:
    for attribute, field in (("gen_ai.usage.input_tokens", "prompt_tokens"),
                             ("gen_ai.usage.output_tokens", "completion_tokens")):
        value = getattr(usage, field, None)
        if isinstance(value, int):
            span.set_attribute(attribute, value)


def llm_unavailable(error: openai.OpenAIError) -> Unavailable:
    """An upstream failure as our own error: UNAVAILABLE with a reason, never the raw exception text."""
    if isinstance(error, openai.APITimeoutError):
        failure = Unavailable("the language model did not answer in time", reason="LLM_TIMEOUT")
    elif isinstance(error, openai.APIConnectionError):
        failure = Unavailable("the language model endpoint cannot be reached", reason="LLM_UNAVAILABLE")
    elif isinstance(error, openai.APIStatusError):
        status = error.status_code
        reason = {401: "LLM_AUTH_FAILED", 403: "LLM_AUTH_FAILED", 429: "LLM_RATE_LIMITED"}.get(
            status, "LLM_REJECTED" if 400 <= status < 500 else "LLM_UNAVAILABLE")
        failure = Unavailable(f"the language model endpoint answered HTTP {status}", reason=reason,
                              http_status=status)
    else:
        failure = Unavailable("the language model endpoint failed", reason="LLM_UNAVAILABLE")
    log.warning("llm_failed", reason=failure.reason, error=type(error).__name__, detail=str(error)[:300])
    LLM_ERRORS.labels(failure.reason).inc()
    return failure


def _history_messages(history: Sequence[HistoryTurn]) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for turn in history:
        messages.append({"role": "user", "content": turn.query})
        # their [n] markers referred to another turn's blocks
        messages.append({"role": "assistant", "content": strip_markers(turn.answer)})
    return messages


def user_prompt(request: AnswerRequest) -> str:
    parts = ["Context blocks:"]
    if request.documents:
        for block in request.documents:
            parts.append(f"[{block.marker}] ({block.label()})\n{block.text.strip()}")
    else:
        parts.append("(no passage of the documents matched this question)")
    if request.memories:
        notes = "\n".join(
            f"- User: {shorten(memory.user_message, MEMORY_CHARS)} / Assistant: "
            f"{shorten(strip_markers(memory.assistant_message), MEMORY_CHARS)}"
            for memory in request.memories)
        parts.append(f"Notes from earlier conversations (not sources, do not cite):\n{notes}")
    parts.append(f"Question: {request.query.strip()}")
    return "\n\n".join(parts)


def build_messages(request: AnswerRequest) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, *_history_messages(request.history),
            {"role": "user", "content": user_prompt(request)}]


class LLMAnswerer:

    def __init__(self, client: LLMClient) -> None:
        self.client = client
        self.model = client.model

    async def stream(self, request: AnswerRequest) -> AsyncIterator[str]:
        produced = False
        async for piece in self.client.stream(build_messages(request), temperature=ANSWER_TEMPERATURE,
                                              max_tokens=ANSWER_MAX_TOKENS):
            produced = True
            yield piece
        if not produced:
            LLM_ERRORS.labels("LLM_EMPTY_ANSWER").inc()
            raise Unavailable("the language model returned an empty answer", reason="LLM_EMPTY_ANSWER")

    async def close(self) -> None:
        await self.client.close()
