"""Tables for the terminal and docs/QUALITY.md (with a plot) from one or more saved eval results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

COLUMNS = (
    ("context_r@1", "ctx R@1"), ("context_r@5", "ctx R@5"), ("context_mrr", "ctx MRR"),
    ("sources_r@1", "src R@1"), ("sources_r@5", "src R@5"), ("sources_r@10", "src R@10"),
    ("sources_mrr", "src MRR"), ("sources_ndcg@10", "src nDCG@10"), ("cited_hit", "cited ∋ page"),
    ("cited_precision", "cited precision"),
    ("gold_in_answer", "gold in answer"), ("cited_per_answer", "cited/answer"), ("markers_valid", "[n] valid"),
    ("not_found", "not found"), ("failed", "errors"), ("answer_words_p50", "words p50"),
    ("latency_ms_p50", "ms p50"), ("latency_ms_p95", "ms p95"),
)
PLOTTED = (("sources_r@5", "sources R@5"), ("sources_mrr", "sources MRR"), ("cited_hit", "answer page cited"),
           ("cited_precision", "cited precision"), ("gold_in_answer", "gold in answer"))


def _cell(name: str, value: float) -> str:
    if name == "failed":
        return str(int(value))
    if name.startswith(("latency", "answer_words")):
        return f"{value:.0f}" if name.startswith("answer") else f"{value:.1f}"
    return f"{value:.2f}" if name == "cited_per_answer" else f"{value:.3f}"


def rows(run: dict) -> list[tuple[str, str, dict]]:
    """(configuration, group, values): overall first, then each corpus, then each non-English language."""
    found = []
    for name, result in run["configurations"].items():
        found.append((name, "all", result["overall"]))
        found.extend((name, corpus, values) for corpus, values in result["by_corpus"].items())
        found.extend((name, f"lang={lang}", values) for lang, values in result["by_lang"].items()
                     if lang != "en" and len(result["by_lang"]) > 1)
    return found


def markdown_table(run: dict) -> str:
    header = "| configuration | questions | group | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, group, values in rows(run):
        cells = " | ".join(_cell(key, values.get(key, 0.0)) for key, _ in COLUMNS)
        lines.append(f"| {name} | {int(values.get('questions', 0))} | {group} | {cells} |")
    return "\n".join(lines)


def terminal_table(run: dict) -> str:
    keys = ("context_r@5", "sources_r@1", "sources_r@5", "sources_mrr", "cited_hit", "gold_in_answer",
            "answer_words_p50", "latency_ms_p50")
    lines = [f"{'configuration':<16}{'group':<14}{'n':>5}  " + "  ".join(f"{key:>14}" for key in keys)]
    for name, group, values in rows(run):
        lines.append(f"{name:<16}{group:<14}{int(values.get('questions', 0)):>5}  "
                     + "  ".join(f"{_cell(key, values.get(key, 0.0)):>14}" for key in keys))
    return "\n".join(lines)


def plot(runs: Sequence[dict], path: Path) -> bool:
    """Grouped bars: each run × configuration, the user-facing metrics over all corpora."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bars = [(f"{run['label'].split(' (')[0]}\n{name}", result["overall"]) for run in runs
            for name, result in run["configurations"].items()]
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(bars)), 3.6))
    width = 0.8 / len(PLOTTED)
    for index, (key, label) in enumerate(PLOTTED):
        positions = [bar + (index - (len(PLOTTED) - 1) / 2) * width for bar in range(len(bars))]
        axis.bar(positions, [values.get(key, 0.0) for _, values in bars], width, label=label)
    axis.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("share of questions")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.set_title("Docent answer quality through POST /api/chat/ (test split)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def quality_markdown(runs: Sequence[dict], image: str, preface: str = "") -> str:
    parts = ["# Answer quality", "", preface.strip(), "", f"![answer quality]({image})", ""]
    for run in runs:
        corpora = ", ".join(f"{name} ({count})" for name, count in run["corpora"].items())
        parts += [f"## {run['label']}", "",
                  f"{run['date']}, split `{run['split']}`, {run['questions']} questions: {corpora}. "
                  f"Command: `{run['command']}`.", ""]
        if run.get("notes"):
            parts += [run["notes"].strip(), ""]
        for name, result in run["configurations"].items():
            extra = f", {result['history_turns']} turns of chat history first" if result.get("history_turns") else ""
            parts.append(f"- `{name}`: {result['description']}{extra}; ingest {result['ingest_seconds']} s")
        parts += ["", markdown_table(run), ""]
    return "\n".join(part for part in parts if part is not None)
