"""Check every evaluation set: paths exist, ids are unique, and each gold answer is on a gold page.

Page text comes from the project's own parser (services.ingest.parse.iter_pages), or, for documents
with a `ground_truth` map (scanned PDFs without a text layer), from the ground-truth text files.
Matching is case-insensitive with whitespace collapsed and typographic quotes/dashes folded.

    python bench/eval/verify_sets.py [bench/eval/SET.json ...]
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from services.ingest.filetypes import detect_type
from services.ingest.parse import iter_pages

ROOT = Path(__file__).resolve().parents[2]
FOLD = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
                      "\ufb01": "fi", "\ufb02": "fl", "\ufb00": "ff", "\ufb03": "ffi", "\ufb04": "ffl"})


def fold(text: str) -> str:
    return re.sub(r"\s+", " ", text.translate(FOLD)).strip().casefold()


def document_pages(document: dict) -> dict[int, str]:
    if "ground_truth" in document:
        return {int(page): (ROOT / path).read_text() for page, path in document["ground_truth"].items()}
    path = ROOT / document["path"]
    data = path.read_bytes()
    mime = detect_type(path.name, None, data[:8192])
    return {page.number: page.text for page in iter_pages(data, mime)}


def check(set_path: Path) -> list[str]:
    spec = json.loads(set_path.read_text())
    problems: list[str] = []
    documents = {document["id"]: document for document in spec["documents"]}
    if len(documents) != len(spec["documents"]):
        problems.append("duplicate document ids")
    pages = {doc_id: {page: fold(text) for page, text in document_pages(document).items()}
             for doc_id, document in documents.items()}
    ids = Counter(question.get("id") for question in spec["questions"])
    problems += [f"duplicate question id {qid}" for qid, count in ids.items() if count > 1]
    for question in spec["questions"]:
        qid = question.get("id", question["question"][:40])
        for field in ("id", "question", "document", "pages", "answer", "split", "lang"):
            if field not in question:
                problems.append(f"{qid}: no {field}")
        if question["document"] not in pages:
            problems.append(f"{qid}: unknown document {question['document']}")
            continue
        gold = [pages[question["document"]].get(page, "") for page in question["pages"]]
        if "answer" in question and not any(fold(question["answer"]) in text for text in gold):
            problems.append(f"{qid}: answer {question['answer']!r} not on pages {question['pages']}")
        if question.get("split") not in ("dev", "test"):
            problems.append(f"{qid}: split {question.get('split')!r}")
    return problems


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or sorted(Path(__file__).parent.glob("*.json"))
    failed = 0
    for path in paths:
        spec = json.loads(path.read_text())
        problems = check(path)
        splits = Counter(question.get("split") for question in spec["questions"])
        langs = Counter(question.get("lang") for question in spec["questions"])
        print(f"{path.name}: {len(spec['documents'])} documents, {len(spec['questions'])} questions, "
              f"dev {splits['dev']} test {splits['test']}, langs {dict(langs)}, {len(problems)} problems")
        for problem in problems:
            print("  " + problem)
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
