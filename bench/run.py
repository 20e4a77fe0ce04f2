"""`docent bench` / `make bench`: the whole suite against the real stack on its embedded defaults.

Full (< 30 min), `--quick` (< 3 min) and `--soak` (`--soak-minutes`, 10 by default). Writes
bench/results/<date>[-quick|-soak].{json,md} and PNG plots beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from bench import ingest, memory, memory_recall, scale, search, soak
from services.devstack import DevStack

RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs"

PROFILES = {
    "quick": {"batch": 20, "acks": 5, "chunks": 10_000, "requests": 60, "chat_requests": 40,
              "scale": [10_000], "local_cap": 10_000, "long_pdf": False, "scale_out": False},
    "full": {"batch": 200, "acks": 20, "chunks": 100_000, "requests": 400, "chat_requests": 300,
             "scale": [10_000, 100_000, 1_000_000], "local_cap": 20_000, "long_pdf": True, "scale_out": True},
}


def _say(message: str) -> None:
    print(f"bench | {message}", file=sys.stderr, flush=True)


async def _stack_sections(stack: DevStack, profile: dict, results: dict) -> None:
    if profile["long_pdf"]:
        _say("ingest: 205-page PDF vs embed-only")
        results["ingest"]["long_pdf"] = await ingest.long_pdf_run(stack)
    _say(f"ingest: {profile['batch']} small files, with 202 latency of 5 MB uploads meanwhile")
    results["ingest"]["batch"] = await ingest.batch_run(stack, profile["batch"], ack_uploads=profile["acks"])
    _say(f"search: seeding {profile['chunks']} chunks over {search.USERS} users")
    results["corpus"] = await search.seed(stack, profile["chunks"])
    _say("search: gRPC Search at 1/4/16/64 clients")
    results["search"] = await search.grpc_search(stack, profile["requests"])
    _say("chat: REST chat at 1/4/16/64 clients")
    chat_started = dt.datetime.now(dt.UTC)
    results["chat"] = await search.rest_chat(stack, profile["chat_requests"])
    _say("memory: lag of the chat turns just stored; recall of earlier turns by strategy")
    results["memory"] = {"lag": await memory.lag_since(stack, chat_started),
                         "recall": await memory_recall.run(list(memory_recall.STRATEGIES))}
    _say("quality: docent eval (manual corpus, test split, through REST)")
    from services.evaluation import runner, suite

    manual = suite.load([suite.SETS_DIR / "manual.json"]).select(split="test")
    configurations = [runner.CONFIGURATIONS["default"], runner.CONFIGURATIONS["hybrid"]]
    evaluated = await runner.evaluate_on(stack.gateway_url, manual, [], configurations)
    results["quality"] = {name: result["overall"] for name, result in evaluated.items()}


def run_suite(mode: str) -> dict:
    profile = PROFILES[mode]
    results: dict = {"meta": {}, "ingest": {}, "notes": [
        "Search/chat corpus vectors are real MiniLM embeddings of the R manual's paragraphs plus small noise; "
        "queries are distinct per request, so every request embeds its query.",
        "5 MB upload bodies are random bytes behind a PDF header: the acknowledgement path is a real upload's, "
        "and the worker rejects them at once instead of embedding 5 MB of text.",
    ]}
    with DevStack(workers=1) as stack:
        asyncio.run(_stack_sections(stack, profile, results))
    if profile["scale_out"]:
        _say("ingest: the same batch with 2 worker processes")
        with DevStack(workers=2) as stack:
            two = asyncio.run(ingest.batch_run(stack, profile["batch"]))
        one = results["ingest"]["batch"]
        results["ingest"]["scale_out"] = {"one_worker_files_per_s": one["files_per_s"],
                                          "two_workers_files_per_s": two["files_per_s"],
                                          "speedup": round(two["files_per_s"] / one["files_per_s"], 2)}
    else:
        results["notes"].append("quick mode: no 205-page PDF, no worker scale-out, no 100k/1M chunks.")
    _say("ocr: the scanned eval PDFs, pages/s and character error rate")
    from bench import ocr

    results["ocr"] = ocr.run()
    _say(f"scale: store query at {profile['scale']} chunks")
    results["scale"] = scale.run(profile["scale"], profile["local_cap"])
    return results


def run_soak(minutes: float) -> dict:
    results: dict = {"meta": {}, "notes": []}
    with DevStack(workers=1) as stack:
        asyncio.run(search.seed(stack, 5_000))
        _say(f"soak: {minutes} minutes of 16 chat clients + an upload every {soak.UPLOAD_INTERVAL_S} s")
        results["soak"] = asyncio.run(soak.soak(stack, minutes))
    return results


def main(args: argparse.Namespace) -> int:
    mode = "soak" if args.soak else "quick" if args.quick else "full"
    started = time.perf_counter()
    minutes = float(getattr(args, "soak_minutes", None) or os.environ.get("DOCENT_SOAK_MINUTES", 10))
    results = run_soak(minutes) if mode == "soak" else run_suite(mode)
    command = {"full": "make bench", "quick": "docent bench --quick", "soak": "make soak"}[mode]
    results["meta"] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "mode": mode,
                       "command": command, "seconds": time.perf_counter() - started,
                       "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    stem = dt.date.today().isoformat() + ("" if mode == "full" else f"-{mode}")
    directory = Path(getattr(args, "output", None) or RESULTS)
    json_path, md_path = __import__("bench.report", fromlist=["write"]).write(results, directory, stem)
    if mode == "full" and directory == RESULTS:
        (DOCS / "img").mkdir(parents=True, exist_ok=True)
        for png in directory.glob(f"{stem}-*.png"):
            shutil.copy(png, DOCS / "img" / png.name)
    print(md_path.read_text())
    _say(f"wrote {json_path} and {md_path}")
    return 0
