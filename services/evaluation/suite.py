"""The evaluation sets kept in bench/eval/: corpora (files to upload) and questions with gold pages.

One JSON file per corpus. A question names its gold document and the page(s) that answer it, a
short gold answer string found verbatim on a gold page, and its split (`dev` to tune on, `test`
to report on). Sets written before answers and splits were recorded get deterministic defaults:
ids by position, and alternating dev/test.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETS_DIR = REPO / "bench" / "eval"
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Document:
    key: str  # "<corpus>/<id in the set>": unique across corpora
    corpus: str
    path: Path


@dataclass(frozen=True)
class Question:
    id: str
    corpus: str
    text: str
    document: str  # a Document.key
    pages: frozenset[int]
    answer: str
    split: str
    lang: str


@dataclass(frozen=True)
class Suite:
    documents: tuple[Document, ...]
    questions: tuple[Question, ...]

    @property
    def corpora(self) -> list[str]:
        return sorted({document.corpus for document in self.documents})

    def select(self, *, split: str = "all", corpora: Sequence[str] = (), limit_per_corpus: int = 0) -> Suite:
        """The questions of one split (or all) and corpora (or all), with only the documents they need
        when a limit is set (a smoke run uploads little)."""
        chosen: list[Question] = []
        for corpus in self.corpora:
            if corpora and corpus not in corpora:
                continue
            questions = [q for q in self.questions if q.corpus == corpus and split in ("all", q.split)]
            chosen.extend(questions[:limit_per_corpus] if limit_per_corpus else questions)
        needed = {question.document for question in chosen}
        documents = tuple(d for d in self.documents if (d.key in needed if limit_per_corpus else
                                                         (not corpora or d.corpus in corpora)))
        return Suite(documents, tuple(chosen))


def set_files(directory: Path = SETS_DIR) -> list[Path]:
    """Every evaluation set in `directory`: JSON files holding documents and questions, except those
    another set repeats (`"part_of": "<set>"`), so no question counts twice."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(spec, dict) and "documents" in spec and "questions" in spec and not spec.get("part_of"):
            found.append(path)
    return found


def load(paths: Iterable[Path], base: Path = REPO) -> Suite:
    documents: list[Document] = []
    questions: list[Question] = []
    for path in paths:
        spec = json.loads(Path(path).read_text())
        corpus = spec.get("name") or Path(path).stem
        keys = {}
        for item in spec["documents"]:
            keys[item["id"]] = f"{corpus}/{item['id']}"
            documents.append(Document(keys[item["id"]], corpus, (base / item["path"]).resolve()))
        for position, item in enumerate(spec["questions"]):
            questions.append(Question(
                id=item.get("id") or f"{corpus}-{position + 1:03d}", corpus=corpus, text=item["question"],
                document=keys[item["document"]], pages=frozenset(item["pages"]), answer=item.get("answer", ""),
                split=item.get("split") or SPLITS[position % 2], lang=item.get("lang", "en")))
    return Suite(tuple(documents), tuple(questions))
