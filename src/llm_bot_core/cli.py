"""Command-line entry point: `llm-bot-core serve|worker|migrate|run|admin ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from llm_bot_core.config import Settings, get_settings
from llm_bot_core.logs import setup_logging

log = logging.getLogger("llm_bot_core")


def _database_url(settings: Settings) -> str:
    from llm_bot_core.db.engine import resolve_database_url

    url = resolve_database_url(settings)
    # Children (uvicorn workers, Celery pool processes) join the same server instead of
    # starting their own embedded one.
    os.environ["DATABASE_URL"] = url
    return url


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from llm_bot_core.db.migrate import upgrade_to_head

    upgrade_to_head(_database_url(settings))
    log.info("database schema is up to date")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from llm_bot_core.db.migrate import upgrade_to_head

    url = _database_url(settings)
    upgrade_to_head(url)
    os.environ["MIGRATE_ON_START"] = "false"  # done once here, not in every worker
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.backend_workers
    _announce(settings, host, port)
    uvicorn.run(
        "llm_bot_core.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=args.access_log,
        loop="uvloop",
        http="httptools",
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from llm_bot_core.worker.app import celery_app

    _database_url(settings)
    argv = ["worker", "--loglevel", settings.log_level, "--concurrency", str(args.concurrency)]
    if args.pool:
        argv += ["--pool", args.pool]
    celery_app.worker_main(argv)
    return 0


def cmd_admin(settings: Settings, args: argparse.Namespace) -> int:
    from llm_bot_core.admin.run import AdminError, run_admin
    from llm_bot_core.db.migrate import upgrade_to_head

    try:
        if args.provision_only:  # Directus runs elsewhere (e.g. docker compose): REST only
            return run_admin(settings, "", provision_url=args.provision_only)
        url = _database_url(settings)
        upgrade_to_head(url)  # the tables must exist before Directus can register them
        return run_admin(settings, url)
    except AdminError as exc:
        log.error("admin panel: %s", exc)
        return 1


def _announce(settings: Settings, host: str, port: int) -> None:
    if settings.llm_configured:
        log.info("LLM: %s at %s", settings.openrouter_model, settings.effective_llm_base_url)
    else:
        log.warning(
            "No LLM configured: the backend runs and stores messages, but /v1/chat/handle answers "
            "503 llm_not_configured. Set OPENROUTER_API_KEY=sk-or-... (OpenRouter) or "
            "LLM_BASE_URL=http://127.0.0.1:11434/v1 (any OpenAI-compatible server) in .env."
        )
    log.info("backend listening on http://%s:%d (health: /health, API docs: /docs)", host, port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-bot-core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations and exit")

    for name, help_text in (
        ("serve", "run the backend API (migrates first)"),
        ("run", "what `make run` starts: the backend, and the bot when BOT_TOKEN is set"),
    ):
        serve = sub.add_parser(name, help=help_text)
        serve.add_argument("--host", default=None, help="default HOST or 127.0.0.1")
        serve.add_argument("--port", type=int, default=None, help="default PORT or 8080")
        serve.add_argument("--workers", type=int, default=None, help="default BACKEND_WORKERS or 1")
        serve.add_argument("--access-log", action="store_true", help="log every request")

    worker = sub.add_parser("worker", help="run the Celery worker (summaries, indexing)")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--pool", default=None, help="prefork (default), solo, threads")

    admin = sub.add_parser(
        "admin", help="run the Directus admin panel over the same database (provisioned)"
    )
    admin.add_argument("--provision-only", metavar="URL", default=None,
                       help="only provision the Directus already running at URL, then exit")
    return parser


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """`make run`: the backend on embedded defaults."""
    return cmd_serve(settings, args)


COMMANDS = {"migrate": cmd_migrate, "serve": cmd_serve, "worker": cmd_worker, "run": cmd_run,
            "admin": cmd_admin}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's message names the offending variable
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
