"""Command-line entry point: `llm-bot-core serve|worker|bot|admin|migrate|reindex|run`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from llm_bot_core.config import Settings, get_settings
from llm_bot_core.logs import setup_logging

log = logging.getLogger("llm_bot_core")


def _database_url(settings: Settings) -> str:
    from llm_bot_core.db.engine import resolve_database_url

    url = resolve_database_url(settings.storage)
    # Children (uvicorn workers, Celery pool processes) join the same server instead of
    # starting their own embedded one.
    os.environ["DATABASE_URL"] = url
    return url


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from llm_bot_core.db.migrate import upgrade_to_head

    upgrade_to_head(_database_url(settings))
    log.info("database schema is up to date")
    return 0


def _shared_metrics_dir() -> None:
    """Several processes: they write metrics to files in one fresh directory, /metrics sums them.

    Must run before prometheus_client is imported in this process or any child.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llm-bot-core-metrics-")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    workers = args.workers or settings.server.backend_workers
    if workers > 1:
        _shared_metrics_dir()

    import uvicorn

    from llm_bot_core.db.migrate import upgrade_to_head

    url = _database_url(settings)
    upgrade_to_head(url)
    os.environ["MIGRATE_ON_START"] = "false"  # done once here, not in every worker
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    _announce(settings, host, port)
    uvicorn.run(
        "llm_bot_core.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=args.access_log,
        # Without it uvicorn waits for every open request, however long its LLM call takes.
        timeout_graceful_shutdown=settings.server.shutdown_grace_seconds,
        loop="uvloop",
        http="httptools",
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    if args.metrics_port:
        _shared_metrics_dir()
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(args.metrics_port, addr=settings.server.host, registry=registry)

    from llm_bot_core.worker.app import celery_app

    _database_url(settings)
    argv = [
        "worker",
        "--loglevel",
        settings.server.log_level,
        "--concurrency",
        str(args.concurrency),
        "--queues",
        settings.worker.celery_queue,
        "--without-gossip",
        "--without-mingle",
    ]
    if args.pool:
        argv += ["--pool", args.pool]
    celery_app.worker_main(argv)
    return 0


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild the vector store from the messages table (e.g. after changing the model)."""
    import asyncio
    import dataclasses
    import json

    from llm_bot_core.db.engine import create_engine
    from llm_bot_core.db.migrate import upgrade_to_head
    from llm_bot_core.rag.maintenance import reindex

    url = _database_url(settings)
    upgrade_to_head(url)

    async def _run() -> int:
        engine = create_engine(url, settings.storage)
        try:
            report = await reindex(settings, engine, batch=args.batch)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        finally:
            await engine.dispose()
        print(json.dumps(dataclasses.asdict(report), ensure_ascii=False))
        return 0 if report.pending == 0 else 1

    return asyncio.run(_run())


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
    if settings.llm.configured:
        log.info("LLM: %s at %s", settings.llm.chat_model, settings.llm.effective_base_url)
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

    sub.add_parser("bot", help="run the Telegram bot (long polling, or webhook with WEBHOOK_URL)")

    worker = sub.add_parser("worker", help="run the Celery worker (summaries, indexing)")
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--pool", default=None, help="prefork (default), solo, threads")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the worker's Prometheus metrics (job lag, failures, LLM) on this port",
    )

    reindex = sub.add_parser("reindex", help="rebuild semantic memory's vectors from messages")
    reindex.add_argument("--batch", type=int, default=256, help="messages embedded per batch")

    admin = sub.add_parser(
        "admin", help="run the Directus admin panel over the same database (provisioned)"
    )
    admin.add_argument(
        "--provision-only",
        metavar="URL",
        default=None,
        help="only provision the Directus already running at URL, then exit",
    )
    return parser


def cmd_bot(settings: Settings, _: argparse.Namespace) -> int:
    from llm_bot_core.bot.config import BotConfigError, load_bot_settings

    try:
        bot_settings = load_bot_settings()
    except BotConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from llm_bot_core.bot.app import run

    run(bot_settings)
    return 0


def _start_bot_beside(
    settings: Settings, args: argparse.Namespace
) -> subprocess.Popen[bytes] | None:
    """With BOT_TOKEN set, the bot as a child process talking to this backend."""
    from llm_bot_core.bot.config import BotConfigError, load_bot_settings

    try:
        load_bot_settings()
    except BotConfigError as exc:
        if "BOT_TOKEN is not set" in str(exc):
            log.info("BOT_TOKEN is not set: starting the backend without the Telegram bot")
            return None
        raise
    host = args.host or settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    env = {**os.environ, "BACKEND_URL": f"http://{host}:{args.port or settings.server.port}"}
    log.info("starting the Telegram bot (backend %s)", env["BACKEND_URL"])
    return subprocess.Popen([sys.executable, "-m", "llm_bot_core.cli", "bot"], env=env)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """`make run`: the backend on embedded defaults, and the bot beside it when BOT_TOKEN is set."""
    from llm_bot_core.bot.config import BotConfigError

    try:
        bot = _start_bot_beside(settings, args)
    except BotConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # main() turns SIGTERM into SystemExit, so the `finally` below stops the bot with us.
    try:
        return cmd_serve(settings, args)
    finally:
        if bot is not None:
            bot.terminate()
            try:
                bot.wait(10)
            except subprocess.TimeoutExpired:
                bot.kill()


COMMANDS = {
    "migrate": cmd_migrate,
    "serve": cmd_serve,
    "worker": cmd_worker,
    "bot": cmd_bot,
    "run": cmd_run,
    "reindex": cmd_reindex,
    "admin": cmd_admin,
}


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # A normal exit runs atexit hooks, which stop the embedded PostgreSQL. uvicorn re-raises
    # the SIGTERM it caught after its graceful shutdown; with the default handler that would
    # kill the process before those hooks run.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's message names the offending variable
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.server.log_level, settings.server.log_format)
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
