"""Replay the answer step offline on contexts recorded by `docent eval --turns-log`, for tuning.

Retrieval is the slow, fixed part of an eval run; the answerer is a pure function of the context.
This rebuilds each AnswerRequest from a recorded reply's `context` (explain), answers it with the
current extractive answerer, and scores it as `docent eval` does. Tune on the dev split only.

    python -m bench.replay_answers /tmp/dev-turns.jsonl [--show-misses 10]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from google.protobuf import json_format

from docent.v1 import retrieval_pb2
from services.chat.answer import AnswerRequest, citations, context_from_search
from services.chat.answer_extractive import compose
from services.evaluation.metrics import Ranked, contains_gold, is_hit

SOURCES = {"documents": retrieval_pb2.SEARCH_SOURCE_DOCUMENTS, "chat_history": retrieval_pb2.SEARCH_SOURCE_CHAT_HISTORY}


def search_results(context: list[dict]) -> list[retrieval_pb2.SearchResult]:
    results = []
    for item in context:
        result = retrieval_pb2.SearchResult(rank=item["rank"], source=SOURCES[item["source"]], score=item["score"],
                                            text=item["text"])
        if item.get("document"):
            json_format.ParseDict(item["document"], result.document, ignore_unknown_fields=True)
        if item.get("chat_turn"):
            json_format.ParseDict({k: v for k, v in item["chat_turn"].items() if k != "created_at"},
                                  result.chat_turn, ignore_unknown_fields=True)
        results.append(result)
    return results


def replay(path: Path, show_misses: int = 0) -> dict[str, dict[str, float]]:
    totals: dict[str, list[tuple[bool, bool, int]]] = defaultdict(list)
    misses = 0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        question, reply = record["question"], record["reply"]
        context = context_from_search(search_results(reply.get("context") or []))
        request = AnswerRequest(query=question["text"], standalone_query=reply.get("standalone_query") or
                                question["text"], documents=context.documents, memories=context.memories)
        answer = " ".join(compose(request))
        sources = [Ranked(c.document_id, c.page_start, c.page_end, c.cited) for c in citations(answer,
                                                                                             context.documents)]
        pages = frozenset(question["pages"])
        cited = any(s.cited and is_hit(s, record["document_id"], pages) for s in sources)
        gold = contains_gold(answer, question["answer"])
        totals[question["corpus"]].append((cited, gold, len(answer.split())))
        if show_misses and misses < show_misses and not gold:
            misses += 1
            print(f"- {question['text']}\n  gold: {question['answer']}\n  answer: {answer}\n  cited hit: {cited}\n")
    report = {}
    everything = [row for rows in totals.values() for row in rows]
    for corpus, rows in [*sorted(totals.items()), ("all", everything)]:
        words = sorted(row[2] for row in rows)
        report[corpus] = {"n": len(rows), "cited_hit": round(sum(r[0] for r in rows) / len(rows), 3),
                          "gold_in_answer": round(sum(r[1] for r in rows) / len(rows), 3),
                          "words_p50": words[len(words) // 2]}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("turns", type=Path)
    parser.add_argument("--show-misses", type=int, default=0)
    args = parser.parse_args()
    for corpus, values in replay(args.turns, args.show_misses).items():
        print(f"{corpus:<10} {values}")


if __name__ == "__main__":
    main()
