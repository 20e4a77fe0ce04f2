"""Benchmark results: JSON, a Markdown summary against the targets, and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = {
    "ingest_ratio": 0.85, "ack_p99_ms": 30.0, "chat_p50_ms": 25.0, "chat_p99_ms": 60.0, "chat_req_per_s": 100.0,
    "store_p50_ms_1m": 10.0, "grpc_overhead_p50_ms": 3.0, "memory_lag_p99_s": 5.0,
}


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    if met:
        return "met"
    factor = target / value if higher_is_better else value / target
    return f"missed ({factor:.1f}× off)"


def checks(results: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    ingest = results.get("ingest", {}).get("long_pdf", {})
    rows.append(("ingest throughput / embed-only (200+ page PDF)", f"≥ {TARGETS['ingest_ratio']}",
                 str(ingest.get("ratio_vs_embed_only")), _verdict(ingest.get("ratio_vs_embed_only"),
                                                                   TARGETS["ingest_ratio"], True)))
    ack = results.get("ingest", {}).get("batch", {}).get("upload_ack", {}).get("5MB", {})
    rows.append(("202 p99, 5 MB upload while ingest is busy", f"≤ {TARGETS['ack_p99_ms']} ms", str(ack.get("p99_ms")),
                 _verdict(ack.get("p99_ms"), TARGETS["ack_p99_ms"], False)))
    chat = results.get("chat", {}).get("16", {})
    rows.append(("REST chat p50 at 16 clients", f"≤ {TARGETS['chat_p50_ms']} ms", str(chat.get("p50_ms")),
                 _verdict(chat.get("p50_ms"), TARGETS["chat_p50_ms"], False)))
    rows.append(("REST chat p99 at 16 clients", f"≤ {TARGETS['chat_p99_ms']} ms", str(chat.get("p99_ms")),
                 _verdict(chat.get("p99_ms"), TARGETS["chat_p99_ms"], False)))
    best = max((level.get("req_per_s", 0) for level in results.get("chat", {}).values()), default=None)
    rows.append(("REST chat throughput (best level)", f"≥ {TARGETS['chat_req_per_s']} req/s", str(best),
                 _verdict(best, TARGETS["chat_req_per_s"], True)))
    lag = results.get("memory", {}).get("lag", {})
    rows.append(("chat memory lag p99 (stored → searchable), REST chat load", f"≤ {TARGETS['memory_lag_p99_s']} s",
                 str(lag.get("lag_p99_s")), _verdict(lag.get("lag_p99_s"), TARGETS["memory_lag_p99_s"], False)))
    search = results.get("search", {}).get("1", {})
    rows.append(("gRPC Search overhead over the server floor, p50, 1 client", f"≤ {TARGETS['grpc_overhead_p50_ms']} ms",
                 str(search.get("overhead_p50_ms")), _verdict(search.get("overhead_p50_ms"),
                                                              TARGETS["grpc_overhead_p50_ms"], False)))
    largest = max((row for row in results.get("scale", []) if row["store"] == "edge"), key=lambda row: row["chunks"],
                  default=None)
    rows.append((f"store query p50 at {largest['chunks'] if largest else '?'} chunks (edge)",
                 f"≤ {TARGETS['store_p50_ms_1m']} ms at 1M", str(largest["p50_ms"] if largest else None),
                 _verdict(largest["p50_ms"] if largest else None, TARGETS["store_p50_ms_1m"], False)))
    return rows


def _table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict, plots: list[str]) -> str:
    meta = results["meta"]
    parts = [f"# Docent benchmark — {meta['date']} ({meta['mode']})", "",
             f"`{meta['command']}` on {meta['machine']}; {meta['seconds']:.0f} s. Every figure comes with the floor "
             "measured in the same run.", "", "## Targets", "",
             _table(["what", "target", "measured", "verdict"], [list(row) for row in checks(results)])]
    ingest = results.get("ingest", {})
    if ingest:
        parts += ["", "## Ingest", "", "```json", json.dumps({k: v for k, v in ingest.items()}, indent=1), "```"]
    for name, title in (("search", "gRPC Search (50 users)"), ("chat", "REST chat, offline answerer (50 users)")):
        if results.get(name):
            rows = [[level, v["p50_ms"], v["p99_ms"], v["req_per_s"], v.get("floor_p50_ms", ""), v["errors"],
                     ", ".join(f"{k} {x}" for k, x in v["breakdown_p50_ms"].items())]
                    for level, v in results[name].items()]
            parts += ["", f"## {title}", "", f"Corpus: {results.get('corpus', {})}", "",
                      _table(["clients", "p50 ms", "p99 ms", "req/s", "server floor p50 ms", "errors",
                              "server-side breakdown p50 (ms)"], rows)]
    if results.get("memory"):
        memory = results["memory"]
        parts += ["", "## Chat memory", "", "Lag of the turns stored by the REST chat section (bench/memory.py):", "",
                  "```json", json.dumps(memory.get("lag", {}), indent=1), "```", "",
                  "Recall of an earlier turn by a later question in another conversation, by what is embedded "
                  "for the turn (bench/memory_recall.py):", "",
                  _table(["strategy", "R@1", "R@5", "MRR", "tokens/turn", "embed ms/turn"],
                         [[name, v["recall_at_1"], v["recall_at_5"], v["mrr"], v["tokens_per_turn"],
                           v["embed_ms_per_turn"]] for name, v in memory.get("recall", {}).items()])]
    if results.get("scale"):
        parts += ["", "## Store scale (in-process, random 384-d vectors, 50 users)", "",
                  _table(["store", "chunks", "query p50 ms", "p99 ms", "load s", "RSS delta MB"],
                         [[r["store"], r["chunks"], r["p50_ms"], r["p99_ms"], r["load_s"], r["rss_delta_mb"]]
                          for r in results["scale"]])]
    if results.get("ocr"):
        o = results["ocr"]
        parts += ["", "## OCR (in-process, the scanned eval PDFs)", "",
                  _table(["pages", "seconds", "pages/s", "CER median", "CER max"],
                         [[o["pages"], o["seconds"], o["pages_per_s"], o["cer_median"], o["cer_max"]]])]
    if results.get("quality"):
        quality = results["quality"]
        parts += ["", "## Answer quality (`docent eval`, manual corpus, test split; full report: docs/QUALITY.md)", "",
                  _table(["configuration", "sources R@1", "sources R@5", "MRR", "answer page cited", "gold in answer",
                          "chat p50 ms"],
                         [[name, v["sources_r@1"], v["sources_r@5"], v["sources_mrr"], v["cited_hit"],
                           v["gold_in_answer"], v["latency_ms_p50"]] for name, v in quality.items()])]
    if results.get("soak"):
        soak = {k: v for k, v in results["soak"].items() if k != "rss_samples"}
        parts += ["", "## Soak", "", "```json", json.dumps(soak, indent=1), "```"]
    if results.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    parts += ["", "## Plots", ""] + [f"![{Path(plot).stem}]({Path(plot).name})" for plot in plots]
    return "\n".join(parts) + "\n"


def _finish(plt, figure, axis, xlabel: str, ylabel: str, title: str, path: Path, fontsize: str | None = None) -> str:
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=fontsize)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def plot(results: dict, directory: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []
    if results.get("search") or results.get("chat"):
        figure, axis = plt.subplots(figsize=(7, 4))
        for name in ("search", "chat"):
            data = results.get(name) or {}
            levels = [int(level) for level in data]
            for percentile, style in (("p50_ms", "-o"), ("p99_ms", "--o")):
                axis.plot(levels, [data[str(level)][percentile] for level in levels], style,
                          label=f"{name} {percentile[:3]}")
        axis.set_xscale("log", base=2)
        written.append(_finish(plt, figure, axis, "concurrent clients", "latency (ms)", "Latency vs concurrency",
                               directory / f"{stem}-latency.png"))
    if results.get("scale"):
        figure, axis = plt.subplots(figsize=(7, 4))
        for store in sorted({row["store"] for row in results["scale"]}):
            rows = [row for row in results["scale"] if row["store"] == store]
            axis.plot([row["chunks"] for row in rows], [row["p50_ms"] for row in rows], "-o", label=f"{store} p50")
        axis.set_xscale("log")
        axis.set_yscale("log")
        written.append(_finish(plt, figure, axis, "chunks in the collection", "query latency (ms)",
                               "Store query latency vs size", directory / f"{stem}-scale.png"))
    samples = (results.get("soak") or {}).get("rss_samples")
    if samples:
        figure, axis = plt.subplots(figsize=(7, 4))
        roles = sorted({role for _, sample in samples for role in sample})
        for role in roles:
            axis.plot([at / 60 for at, _ in samples], [sample.get(role, float("nan")) for _, sample in samples],
                      label=role)
        written.append(_finish(plt, figure, axis, "minutes", "PSS (MB)", "Soak: memory per process role",
                               directory / f"{stem}-soak-rss.png", "small"))
    return written


def write(results: dict, directory: Path, stem: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plots = plot(results, directory, stem)
    md_path = directory / f"{stem}.md"
    md_path.write_text(markdown(results, plots))
    return json_path, md_path
