"""The answerers the chat service can answer with, one registration each.

`DOCENT_ANSWERER` names one; `auto` (the default) takes the first whose `auto` test passes: an
OpenAI-compatible LLM when `DOCENT_LLM_BASE_URL` is set, else the offline extractive answerer.
Each comes with the follow-up rewriter that suits it. Adding an answerer is one module
implementing `services.chat.answer.Answerer` plus one line in `ANSWERERS` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from services.chat.answer import Answerer
from services.chat.rewrite import Rewriter
from services.runtime.config import Settings
from services.runtime.registry import Kind, build_chosen


def _llm(settings: Settings) -> tuple[Answerer, Rewriter]:
    from services.chat.answer_llm import LLMAnswerer, LLMClient

    if not settings.llm_base_url:
        raise SystemExit("docent: DOCENT_ANSWERER=llm needs DOCENT_LLM_BASE_URL")
    client = LLMClient.from_settings(settings)
    return LLMAnswerer(client), Rewriter(client)


def _extractive(settings: Settings) -> tuple[Answerer, Rewriter]:
    from services.chat.answer_extractive import ExtractiveAnswerer

    return ExtractiveAnswerer(), Rewriter()


ANSWERERS: tuple[Kind[tuple[Answerer, Rewriter]], ...] = (
    Kind("llm", _llm, auto=lambda settings: bool(settings.llm_base_url)),
    Kind("extractive", _extractive, auto=lambda settings: True),
)


def create_answering(settings: Settings) -> tuple[Answerer, Rewriter]:
    return build_chosen(ANSWERERS, settings.answerer, settings, "DOCENT_ANSWERER")
