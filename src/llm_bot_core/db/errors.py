"""Database failures by cause: a lost or refused connection, a value the database refuses, a bug.

Only the first is `503 database_unavailable` (the bot retries it); a value of the request that
PostgreSQL cannot store (a NUL byte, say) is the client's `422 validation_error`; anything else
(integrity or programming errors, a missing table) is a `500 internal_error`.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from llm_bot_core.errors import CoreError


class DatabaseUnavailable(CoreError, ConnectionError):
    """No connection to PostgreSQL: refused, lost, or the server is shutting down.

    A ConnectionError too, so code that retries on OSError (the worker's tasks) keeps doing so.
    """

    code = "database_unavailable"


# What the API's database handler is registered for: SQLAlchemy's errors and the driver's,
# which the request path's statements on the raw asyncpg connection raise as they are.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

# SQLSTATEs of a connection that is gone or was refused: class 08 (connection exception),
# 57P01-57P05 (admin/crash shutdown, cannot connect now, database dropped, idle session timeout),
# 53300 (too many connections), class 28 (authorization refused) and 3D000 (no such database).
_LOST_STATES = ("08", "57P", "53300", "28", "3D000")
# Class 22, data exception: the value sent cannot be stored (22021 a NUL byte, 22P02 bad text
# representation, 22001 too long). The statements are ours, so the value came from the request.
_INPUT_STATE = "22"


def lost_connection(exc: BaseException) -> bool:
    """True when `exc` means the connection is gone (and no statement on it can succeed)."""
    return _classify(exc) == "database_unavailable"


def as_core_error(exc: BaseException) -> CoreError:
    """The API's error for a database failure, by its cause (see the module docstring)."""
    code = _classify(exc)
    if code == "validation_error":
        reason = _server_message(exc)
        return CoreError(f"A value of the request cannot be stored: {reason}", code=code)
    if code == "database_unavailable":
        return DatabaseUnavailable()
    return CoreError(code="internal_error")


def _classify(exc: BaseException) -> str:
    for e in _chain(exc):
        if isinstance(e, DatabaseUnavailable | OSError | PoolTimeout):
            return "database_unavailable"
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return "database_unavailable"
        # The driver's protocol is in a state no statement can follow, e.g. after reading the
        # FATAL a shutting-down server sends to idle connections. A stale type cache is not.
        if isinstance(e, asyncpg.InternalClientError) and not isinstance(
            e, asyncpg.exceptions.OutdatedSchemaCacheError
        ):
            return "database_unavailable"
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str) and state:
            if state.startswith(_LOST_STATES):
                return "database_unavailable"
            return "validation_error" if state.startswith(_INPUT_STATE) else "internal_error"
        # The driver could not encode an argument (e.g. a lone surrogate in a str).
        if isinstance(e, asyncpg.exceptions.DataError):
            return "validation_error"
    return "internal_error"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, the driver error SQLAlchemy wraps, and their causes, outermost first."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None) if isinstance(e, DBAPIError) else None
        # Causes only (`raise ... from`): SQLAlchemy and the driver chain their translations so;
        # an unrelated error being handled when this one was raised is not its cause.
        todo.extend(x for x in (orig, e.__cause__) if x is not None)


def _server_message(exc: BaseException) -> str:
    for e in _chain(exc):
        if isinstance(e, asyncpg.PostgresError | asyncpg.exceptions.DataError):
            return str(e.args[0] if e.args else e)
    return "refused by the database"
