"""Answers from any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, llama.cpp).

The prompt gives the document passages as numbered blocks [1]..[n] and asks the model to cite
them and to say so when they do not hold the answer; this conversation's recent turns go in as
prior messages, and turns found in earlier conversations as notes that are not to be cited.
Tokens are streamed as they arrive. Any upstream failure (refused connection, timeout after the
configured retries, an HTTP error, a broken stream) becomes UNAVAILABLE with a reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai
import structlog
from openai import AsyncOpenAI

from services.chat.answer import AnswerRequest
from services.chat.history import HistoryTurn
from services.chat.text import shorten, strip_markers
from services.runtime.call_context import remaining_seconds
from services.runtime.config import Settings
from services.runtime.errors import Unavailable

log = structlog.get_logger("docent.chat.llm")

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

    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient:
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "unused"
        client = AsyncOpenAI(base_url=settings.llm_base_url, api_key=api_key, timeout=settings.llm_timeout_seconds,
                             max_retries=settings.llm_max_retries)
        return cls(client, settings.llm_model)

    def _timeout(self) -> float:
        """Per attempt: the configured timeout, or less when the user request's deadline is nearer. The
        client's own retries (1 + DOCENT_LLM_MAX_RETRIES attempts) are the only ones (docs/RELIABILITY.md)."""
        configured = self.client.timeout
        return remaining_seconds(configured if isinstance(configured, (int, float)) else 60.0)

    async def stream(self, messages: Sequence[dict[str, str]], **params: Any) -> AsyncIterator[str]:
        """The completion's text pieces as they arrive."""
        try:
            stream = await self.client.chat.completions.create(
                model=self.model, messages=list(messages), stream=True, timeout=self._timeout(),
                **params)  # type: ignore[arg-type]
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices or ():
                        content = choice.delta.content if choice.delta else None
                        if content:
                            yield content
        except openai.OpenAIError as error:
            raise llm_unavailable(error) from None

    async def complete(self, messages: Sequence[dict[str, str]], **params: Any) -> str:
        try:
            reply = await self.client.chat.completions.create(
                model=self.model, messages=list(messages), stream=False, timeout=self._timeout(),
                **params)  # type: ignore[arg-type]
        except openai.OpenAIError as error:
            raise llm_unavailable(error) from None
        if not reply.choices:
            return ""
        return reply.choices[0].message.content or ""

    async def close(self) -> None:
        await self.client.close()


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
            raise Unavailable("the language model returned an empty answer", reason="LLM_EMPTY_ANSWER")

    async def close(self) -> None:
        await self.client.close()
