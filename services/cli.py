"""The `docent` command: one entry point for every role and operator task."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.runtime.config import Settings

ROLES = ("gateway", "ingest", "retrieval", "chat")


def _caller_arguments(parser: argparse.ArgumentParser) -> None:
    """Who the command acts as: an API key, an account's email, or a raw user id."""
    whose = parser.add_mutually_exclusive_group()
    whose.add_argument("--api-key", default=None,
                       help="an API key from the web UI or POST /api/keys (default: $DOCENT_API_KEY)")
    whose.add_argument("--email", default=None, help="the account, as signed up in the web UI (needs the database)")
    whose.add_argument("--user", default=None, help="a raw user id (default: $DOCENT_USER or 'cli')")


def _user_id_for_email(settings: Settings, email: str) -> str:
    import asyncio

    from services.gateway.accounts import user_id_for_email
    from services.runtime.embedded import resolve_backing_urls

    # the accounts database: DOCENT_DATABASE_URL, else the embedded one `docent up` runs for this data dir
    database_url = resolve_backing_urls(settings, redis=False).database_url or ""
    user_id = asyncio.run(user_id_for_email(database_url, email))
    if user_id is None:
        raise SystemExit(f"docent: no account with the email {email!r}")
    return user_id


def _credential(args: argparse.Namespace, settings: Settings) -> str:
    """The bearer credential the command sends: the API key as is, else a token minted for the user."""
    import os

    from services.runtime.auth import jwt_secret, mint_token

    api_key = args.api_key or (None if args.email or args.user else os.environ.get("DOCENT_API_KEY"))
    if api_key:
        return api_key
    user_id = _user_id_for_email(settings, args.email) if args.email else (
        args.user or os.environ.get("DOCENT_USER") or "cli")
    return mint_token(jwt_secret(settings), user_id, 4 * 3600)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docent", description="Docent: chat with your documents.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start everything (embedded backing services, 4 services, 1 worker)")
    up.add_argument("--workers", type=int, default=None, help="worker processes (default: DOCENT_WORKER_PROCESSES)")

    serve = sub.add_parser("serve", help="run one service")
    serve.add_argument("role", choices=ROLES)

    worker = sub.add_parser("worker", help="run a Dramatiq worker (document processing, chat memory)")
    worker.add_argument("--queues", nargs="*", default=None, help="queues to consume (default: all)")
    worker.add_argument("--processes", type=int, default=None)
    worker.add_argument("--threads", type=int, default=None)

    sub.add_parser("migrate", help="apply database migrations and exit")

    token = sub.add_parser("token", help="mint a bearer token (for grpcurl and scripts)")
    whose = token.add_mutually_exclusive_group(required=True)
    whose.add_argument("--email", help="the account (as signed up in the web UI) to mint the token for")
    whose.add_argument("--user", help="user id to put in the token")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--admin", action="store_true",
                       help="an operator token, for the maintenance RPCs (ResetIndex, ReindexDocuments, ReindexMemory)")

    ingest = sub.add_parser("ingest", help="upload files over gRPC and show their progress")
    ingest.add_argument("files", nargs="+")
    ingest.add_argument("--no-wait", action="store_true", help="return after the upload is acknowledged")
    _caller_arguments(ingest)

    docs = sub.add_parser("docs", help="list documents with their status")
    _caller_arguments(docs)

    sub.add_parser("queue", help="queue depth, in-flight and failed jobs")

    sub.add_parser("reindex", help="re-embed every document and chat turn of a running Docent "
                                 "(after changing the embedding model)")

    evaluate = sub.add_parser("eval", help="answer and citation quality through the REST API (bench/eval sets)")
    from services.evaluation.cli import add_arguments

    add_arguments(evaluate)

    bench = sub.add_parser("bench", help="benchmarks against floors measured in the same run")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--soak", action="store_true", help="the bounded soak test instead")
    bench.add_argument("--soak-minutes", type=float, default=None, help="soak length (default 10)")
    bench.add_argument("--output", default=None, help="results directory (default bench/results)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command
    if command == "up":
        from services.supervisor import run_supervisor

        return run_supervisor(workers=args.workers)
    if command == "serve":
        from services.runner import run_service

        return run_service(args.role)
    if command == "worker":
        from services.worker_main import run_worker

        return run_worker(queues=args.queues, processes=args.processes, threads=args.threads)
    if command == "migrate":
        from services.runner import run_migrations

        return run_migrations()
    if command == "token":
        from services.runtime.auth import jwt_secret, mint_token
        from services.runtime.config import load_settings

        settings = load_settings()
        user_id = args.user or _user_id_for_email(settings, args.email)
        print(mint_token(jwt_secret(settings), user_id, args.ttl, admin=args.admin))
        return 0
    if command == "reindex":
        import asyncio

        from services.reindex import reindex
        from services.runtime.config import load_settings

        return asyncio.run(reindex(load_settings()))
    if command == "queue":
        import asyncio

        from services.operations import show_queue
        from services.runtime.config import load_settings

        return asyncio.run(show_queue(load_settings()))
    if command in ("ingest", "docs"):
        from services.ingest import cli as ingest_cli
        from services.runtime.config import load_settings

        settings = load_settings()
        return ingest_cli.main(args, settings, _credential(args, settings))
    if command == "eval":
        from services.evaluation.cli import main as eval_main

        return eval_main(args, argv)
    if command == "bench":
        from bench.run import main as bench_main

        return bench_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
