"""`docent eval`: ask the suite's questions through the REST API and report what the user is shown.

    docent eval                                  # test split, every corpus, a throwaway docent up
    docent eval --split dev --configs default    # tune on dev
    docent eval --url http://host:8000 --email me@example.com --password …   # a running system
    docent eval --json after.json --label after  # keep the results
    docent eval --report before.json after.json --quality docs/QUALITY.md    # write the doc + plot
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import sys
from pathlib import Path

from services.evaluation import report, runner, suite

QUALITY_PREFACE = """
Measured by `docent eval` through the REST API a web client uses: each corpus is uploaded as files
(`POST /api/upload/`, then polled until completed), and each question is asked with
`POST /api/chat/` and `explain: true` in a conversation of its own. `ctx` columns rank the
retrieved document context (`context`, documents only); `src` columns rank `sources` as returned.
A ranked item is a hit when it is from the gold document and its pages hold the gold page.
"cited ∋ page": a source the answer cites (`cited: true`) holds the gold page. "gold in answer":
the answer contains the gold answer string (case, spacing, punctuation and [n] markers ignored).
Latency is the client's, for the whole REST call. The sets, their sources and licences:
bench/eval/README.md.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sets", nargs="*", default=None, help="evaluation set JSON files (default: bench/eval/*)")
    parser.add_argument("--split", choices=("dev", "test", "all"), default="test")
    parser.add_argument("--corpus", action="append", default=[], help="only this corpus (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="at most N questions per corpus (smoke runs)")
    parser.add_argument("--configs", default="default,memory,hybrid",
                        help=f"comma-separated, of: {', '.join(runner.CONFIGURATIONS)}")
    parser.add_argument("--memory-turns", type=int, default=None, help="chat history turns of the memory condition")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting for the throwaway stack (repeatable)")
    parser.add_argument("--url", default=None, help="a running gateway instead of a throwaway stack")
    parser.add_argument("--email", default="", help="with --url: the account to use (created if missing)")
    parser.add_argument("--password", default="")
    parser.add_argument("--opaque-names", action="store_true",
                        help="upload every file as document-NNN.<ext> (no help from descriptive file names)")
    parser.add_argument("--label", default="current", help="the name of this run in reports")
    parser.add_argument("--json", default=None, help="write the results as JSON to this path")
    parser.add_argument("--samples", type=int, default=0, help="keep N sample answers per configuration")
    parser.add_argument("--turns-log", default=None, help="append every question and its full reply (JSON lines)")
    parser.add_argument("--report", nargs="*", default=None, help="saved results to report instead of running")
    parser.add_argument("--rescore", default=None, metavar="TURNS_LOG",
                        help="recompute the metrics of the --json results from the replies in this turns log")
    parser.add_argument("--quality", default=None, help="write this Markdown report (with a plot beside it)")
    parser.add_argument("--notes", default=None, help="with --quality: a Markdown file appended to the report")


def _configurations(names: str, memory_turns: int | None) -> list[runner.Configuration]:
    chosen = []
    for name in filter(None, (part.strip() for part in names.split(","))):
        if name not in runner.CONFIGURATIONS:
            raise SystemExit(f"unknown configuration {name!r}; known: {', '.join(runner.CONFIGURATIONS)}")
        configuration = runner.CONFIGURATIONS[name]
        if configuration.memory_turns and memory_turns is not None:
            configuration = runner.Configuration(configuration.name, configuration.description, configuration.env,
                                                 configuration.request, memory_turns)
        chosen.append(configuration)
    return chosen


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    paths = [Path(path) for path in args.sets] if args.sets else suite.set_files()
    full = suite.load(paths)
    measured = full.select(split=args.split, corpora=args.corpus, limit_per_corpus=args.limit)
    # the memory condition's history: the other split's questions over the same corpora
    other = "dev" if args.split == "test" else "test"
    history_pool = list(full.select(split=other if args.split != "all" else "all", corpora=args.corpus).questions)
    stack_env = dict(item.split("=", 1) for item in args.env)
    results = asyncio.run(runner.evaluate(
        measured, history_pool, _configurations(args.configs, args.memory_turns), base_url=args.url or "",
        email=args.email, password=args.password, stack_env=stack_env, keep_answers=args.samples,
        turns_log=Path(args.turns_log) if args.turns_log else None, opaque_names=args.opaque_names))
    counts: dict[str, int] = {}
    for question in measured.questions:
        counts[question.corpus] = counts.get(question.corpus, 0) + 1
    return {"label": args.label, "date": datetime.date.today().isoformat(), "split": args.split,
            "questions": len(measured.questions), "corpora": counts, "server_env": stack_env,
            "opaque_names": args.opaque_names,
            "command": "docent " + shlex.join(argv), "configurations": results}


def main(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.rescore:
        saved = json.loads(Path(args.json).read_text())
        saved["configurations"] = runner.rescore(Path(args.rescore), saved["configurations"])
        Path(args.json).write_text(json.dumps(saved, indent=1) + "\n")
        runs = [saved]
    elif args.report is not None:
        runs = [json.loads(Path(path).read_text()) for path in args.report]
    else:
        runs = [run(args, argv)]
        if args.json:
            Path(args.json).write_text(json.dumps(runs[0], indent=1) + "\n")
    for result in runs:
        print(f"{result['label']}: split {result['split']}, {result['questions']} questions")
        print(report.terminal_table(result))
    if args.quality:
        quality = Path(args.quality)
        image = quality.parent / "img" / "quality.png"
        plotted = report.plot(runs, image)
        notes = Path(args.notes).read_text() if args.notes else ""
        quality.write_text(report.quality_markdown(runs, str(image.relative_to(quality.parent)) if plotted else "",
                                                   QUALITY_PREFACE) + ("\n" + notes if notes else ""))
        print(f"wrote {quality}" + (f" and {image}" if plotted else " (no plot: matplotlib is not installed)"))
    return 0
