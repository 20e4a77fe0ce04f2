"""Run the evaluation suite through the REST API of a running Docent, or of a throwaway one.

For each configuration: sign up a fresh user, upload every document of the selected corpora,
wait until they are searchable, then ask each question in a new conversation with `explain`
(the conversation is deleted afterwards, so the questions do not become each other's memory).
The memory condition first holds a long chat history: questions of the other split asked in
conversations of five turns, kept, and indexed into memory before the measured questions.
Configurations with the same server settings share one stack and one upload.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from services.evaluation.client import EvalClientError, RestClient
from services.evaluation.metrics import Outcome, Ranked, by_group, score, summarise
from services.evaluation.suite import Question, Suite

log = structlog.get_logger("docent.eval")

HISTORY_TURNS_PER_CONVERSATION = 5
NOT_FOUND_PREFIX = "I couldn't find"


@dataclass(frozen=True)
class Configuration:
    name: str
    description: str
    env: dict[str, str] = field(default_factory=dict)  # server settings: a stack of its own
    request: dict[str, Any] = field(default_factory=dict)  # per-request chat options (mode, weights, top_k)
    memory_turns: int = 0


CONFIGURATIONS = {
    "default": Configuration("default", "the shipped defaults"),
    "memory": Configuration("memory", "the defaults, asked by a user with a long chat history", memory_turns=300),
    "hybrid": Configuration("hybrid", "dense + BM25 fusion", request={"mode": "hybrid"}),
    "dense": Configuration("dense", "dense retrieval only", request={"mode": "dense"}),
    "contextual": Configuration("contextual", "chunks embedded led by their document's title",
                                env={"DOCENT_CONTEXTUAL_CHUNKS": "true"}),
    "contextual-hybrid": Configuration("contextual-hybrid", "contextual chunks + dense/BM25 fusion",
                                       env={"DOCENT_CONTEXTUAL_CHUNKS": "true"}, request={"mode": "hybrid"}),
    **{f"hybrid-dense{weight}": Configuration(
        f"hybrid-dense{weight}", f"hybrid, the dense ranking fused again at weight {weight}",
        env={"DOCENT_HYBRID_DENSE_WEIGHT": str(weight)}, request={"mode": "hybrid"}) for weight in (0.3, 0.5, 0.7)},
    "minilm": Configuration("minilm", "all-MiniLM-L6-v2 (English only; the default embedder before "
                            "multilingual-e5-small) with its tuned thresholds",
                            env={"DOCENT_EMBEDDING_MODEL": "all-MiniLM-L6-v2"}),
    "documents-only": Configuration("documents-only", "chat-history weight 0 (no memory search)",
                                    request={"weights": {"documents": 1.0, "chat_history": 0.0}}),
}


def _ranked_context(body: dict) -> list[Ranked]:
    return [Ranked(item["document"]["document_id"], item["document"]["page_start"], item["document"]["page_end"])
            for item in body.get("context") or [] if item.get("source") == "documents" and item.get("document")]


def _ranked_sources(body: dict) -> list[Ranked]:
    # a server without the `cited` flag returned only the sources its answer cited
    return [Ranked(item["document_id"], item["page_start"], item["page_end"], bool(item.get("cited", True)),
                   item.get("marker", 0)) for item in body.get("sources") or []]


async def ask(client: RestClient, question: Question, document_id: str,
              request: dict[str, Any]) -> tuple[Outcome, dict]:
    """One question in a conversation of its own; a failed call is a miss, recorded with its error."""
    try:
        body, latency = await client.chat(question.text, **request)
    except EvalClientError as error:
        log.warning("eval_question_failed", question=question.id, error=str(error))
        body, latency = {"answer": "", "error": str(error)}, 0.0
    outcome = score(question.id, question.corpus, question.lang, document_id, question.pages, question.answer,
                    body["answer"], _ranked_context(body), _ranked_sources(body), latency,
                    body["answer"].startswith(NOT_FOUND_PREFIX), failed="error" in body)
    if body.get("conversation_id"):
        await client.delete_conversation(body["conversation_id"])
    return outcome, body


def rescore(turns_log: Path, results: dict[str, dict]) -> dict[str, dict]:
    """Recompute every configuration's metrics from the replies a run recorded (`turns_log`), e.g.
    after a metric was added; what the server answered is not asked again."""
    outcomes: dict[str, list[Outcome]] = {}
    for line in turns_log.read_text().splitlines():
        record = json.loads(line)
        question, body = record["question"], record["reply"]
        outcomes.setdefault(record["configuration"], []).append(score(
            question["id"], question["corpus"], question["lang"], record["document_id"],
            frozenset(question["pages"]), question["answer"], body["answer"], _ranked_context(body),
            _ranked_sources(body), body.get("latency_ms", 0.0), body["answer"].startswith(NOT_FOUND_PREFIX),
            failed="error" in body))
    for name, rows in outcomes.items():
        latencies = {row["question_id"]: row["latency_ms"] for row in results[name]["outcomes"]}
        rows = [Outcome(**{**row.__dict__, "latency_ms": latencies.get(row.question_id, row.latency_ms)})
                for row in rows]
        results[name].update(overall=summarise(rows), by_corpus=by_group(rows, "corpus"),
                             by_lang=by_group(rows, "lang"), outcomes=[row.__dict__ for row in rows])
    return results


async def build_history(client: RestClient, questions: Sequence[Question], turns: int,
                        request: dict[str, Any], timeout: float = 900) -> int:
    """Ask `turns` questions in conversations of five, keep them, and wait until their memory is indexed."""
    if not questions or turns <= 0:
        return 0
    conversations: list[str] = []
    conversation_id = None
    for position in range(turns):
        if position % HISTORY_TURNS_PER_CONVERSATION == 0:
            conversation_id = None
        body, _ = await client.chat(questions[position % len(questions)].text, conversation_id=conversation_id,
                                    **request)
        if conversation_id is None:
            conversation_id = body["conversation_id"]
            conversations.append(conversation_id)
    deadline = time.monotonic() + timeout
    pending = list(conversations)
    while pending:
        still = []
        for conversation_id in pending:
            turns_of = (await client.conversation(conversation_id)).get("turns") or []
            if not all(turn.get("memory_indexed") for turn in turns_of):
                still.append(conversation_id)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"memory of {len(pending)} conversations not indexed after {timeout:.0f}s")
            await asyncio.sleep(1)
    return turns


def _upload_name(path: Path, number: int, opaque: bool) -> str:
    return f"document-{number:03d}{path.suffix}" if opaque else path.name


async def evaluate_on(base_url: str, suite: Suite, history_pool: Sequence[Question],
                      configurations: Sequence[Configuration], *, email: str = "", password: str = "",
                      keep_answers: int = 0, turns_log: Path | None = None,
                      opaque_names: bool = False) -> dict[str, dict]:
    """Every configuration against one running gateway (they must share its server settings).
    `turns_log`: append each question with the full REST reply as a JSON line (for offline study).
    `opaque_names`: upload every file as "document-NNN.<ext>", so no configuration gains from the
    suite's descriptive file names (a user's files are often called "scan0001.pdf")."""
    results: dict[str, dict] = {}
    async with RestClient(base_url) as client:
        await client.sign_in(email, password)
        started = time.perf_counter()
        ids = {document.key: await client.upload(document.path, _upload_name(document.path, number, opaque_names))
               for number, document in enumerate(suite.documents, 1)}
        statuses = await client.wait_finished(list(ids.values()))
        ingest_seconds = time.perf_counter() - started
        # a document that failed to ingest stays in: its questions count as misses, as for a user
        failed = {key: statuses[ids[key]]["error"] for key in ids if statuses[ids[key]]["status"] == "failed"}
        if failed:
            log.warning("eval_documents_failed", documents=failed)
        # memory conditions last: their history would otherwise be the others' memory too
        for configuration in sorted(configurations, key=lambda c: c.memory_turns):
            history = await build_history(client, history_pool, configuration.memory_turns, configuration.request)
            outcomes: list[Outcome] = []
            samples: list[dict] = []
            for question in suite.questions:
                outcome, body = await ask(client, question, ids[question.document], configuration.request)
                outcomes.append(outcome)
                if turns_log is not None:
                    with turns_log.open("a") as handle:
                        handle.write(json.dumps({"configuration": configuration.name, "question": question.__dict__,
                                                 "document_id": ids[question.document], "reply": body},
                                                default=sorted) + "\n")
                # a few answers, and the misses among the next ones: what to look at when tuning
                if len(samples) < keep_answers or (not outcome.cited_hit and len(samples) < 3 * keep_answers):
                    samples.append({"question": question.text, "gold": question.answer, "answer": body["answer"],
                                    "cited_hit": outcome.cited_hit, "corpus": question.corpus})
            results[configuration.name] = {
                "description": configuration.description, "env": configuration.env,
                "request": configuration.request, "history_turns": history,
                "ingest_seconds": round(ingest_seconds, 1), "failed_documents": failed,
                "overall": summarise(outcomes),
                "by_corpus": by_group(outcomes, "corpus"), "by_lang": by_group(outcomes, "lang"),
                "outcomes": [outcome.__dict__ for outcome in outcomes], "samples": samples}
            log.info("eval_configuration_done", configuration=configuration.name,
                     **results[configuration.name]["overall"])
    return results


async def evaluate(suite: Suite, history_pool: Sequence[Question], configurations: Sequence[Configuration], *,
                   base_url: str = "", email: str = "", password: str = "", stack_env: dict[str, str] | None = None,
                   keep_answers: int = 0, turns_log: Path | None = None,
                   opaque_names: bool = False) -> dict[str, dict]:
    """Against `base_url` when given, else a throwaway `docent up` per distinct server setting."""
    if base_url:
        return await evaluate_on(base_url, suite, history_pool, configurations, email=email, password=password,
                                 keep_answers=keep_answers, turns_log=turns_log, opaque_names=opaque_names)
    from services.devstack import DevStack

    groups: dict[tuple[tuple[str, str], ...], list[Configuration]] = {}
    for configuration in configurations:
        groups.setdefault(tuple(sorted(configuration.env.items())), []).append(configuration)
    results: dict[str, dict] = {}
    for env, members in groups.items():
        stack = await asyncio.to_thread(DevStack(extra_env={**(stack_env or {}), **dict(env)}).start)
        try:
            results.update(await evaluate_on(stack.gateway_url, suite, history_pool, members,
                                             keep_answers=keep_answers, turns_log=turns_log,
                                             opaque_names=opaque_names))
        finally:
            if any(results.get(c.name, {}).get("overall", {}).get("failed") for c in members):
                kept = Path(tempfile.gettempdir()) / f"docent-eval-{int(time.time())}.log"
                kept.write_text(stack.output())
                log.warning("eval_server_log_kept", path=str(kept))
            await asyncio.to_thread(stack.remove)
    return {configuration.name: results[configuration.name] for configuration in configurations}
