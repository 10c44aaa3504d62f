"""The database URL and the engine, built once per process."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_bot_core.config import StorageSettings
from llm_bot_core.db.embedded import start_embedded_postgres
from llm_bot_core.db.errors import DatabaseUnavailable
from llm_bot_core.metrics import instrument_pool


def normalize_url(url: str) -> str:
    """Accept the usual spellings of a PostgreSQL URL and pick the asyncpg driver."""
    for prefix in (
        "postgres://",
        "postgresql://",
        "postgresql+psycopg://",
        "postgresql+psycopg2://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def resolve_database_url(settings: StorageSettings) -> str:
    """DATABASE_URL when set, otherwise the embedded server under DATA_DIR (started on demand)."""
    if settings.database_url:
        return normalize_url(settings.database_url)
    return start_embedded_postgres(settings.data_dir)


def create_engine(url: str, settings: StorageSettings) -> AsyncEngine:
    engine = create_async_engine(
        normalize_url(url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # Off by default: on asyncpg a pre-ping is BEGIN, ";" and ROLLBACK at every checkout,
        # which was the largest DB cost per request. Without it, a connection a restarted
        # PostgreSQL closed is replaced at checkout (_drop_closed); one that dies in use fails
        # its request with 503 and is invalidated.
        pool_pre_ping=settings.db_pool_pre_ping,
        # A restarted PostgreSQL invalidates pooled connections; recycle keeps the pool fresh.
        pool_recycle=1800,
    )
    instrument_pool(engine)
    event.listen(engine.sync_engine, "do_connect", _connect)
    # First among the checkout listeners: the pool gauges count a checkout only once it stands.
    event.listen(engine.sync_engine, "checkout", _drop_closed, insert=True)
    return engine


def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    # The driver reports a refused connection (server down, socket file gone, DNS) as a plain
    # OSError, which says nothing about where it came from; named here, it is a 503 at the API
    # and no other OSError is.
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


def _drop_closed(_dbapi_conn: Any, _record: Any, proxy: Any) -> None:
    # A restarted server closes every pooled connection; asyncpg notices the closed socket on
    # its own. Handing out such a connection would fail a request for nothing: the pool
    # replaces it instead (SQLAlchemy's documented use of DisconnectionError in "checkout").
    if proxy.driver_connection.is_closed():
        raise DisconnectionError("connection closed by the server")
