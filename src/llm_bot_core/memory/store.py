"""SQL of the memory layer. Statements are few and combined: every round trip is request latency."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from llm_bot_core.db.errors import DatabaseUnavailable, lost_connection


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    role: str
    content: str
    created_at: datetime | None = None
    user_id: str | None = None
    """The author of a user turn; the user answered, of an assistant turn."""
    user_name: str | None = None
    input_mode: str = "text"
    """"voice": the content is the transcript of a voice message."""


@dataclass(frozen=True, slots=True)
class Appended:
    session_id: uuid.UUID
    message_id: int
    messages_since_summary: int
    chat_type: str = "private"
    """The kind of the session's chat, as fixed when the session was opened."""

    @property
    def private(self) -> bool:
        return self.chat_type == "private"


@dataclass(frozen=True, slots=True)
class Summary:
    version: int
    content: str
    last_message_id: int


# The two statements of every request run on the pooled connection's asyncpg driver (see
# `_fetchrow`), so they are written in its own parameter form: $1, $2...
_APPEND_TO_SESSION = """
    WITH s AS (
        UPDATE chat_sessions SET messages_since_summary = messages_since_summary + 1
        WHERE id = $1
        RETURNING id, messages_since_summary
    )
    INSERT INTO messages (session_id, role, content, tokens, user_id)
    SELECT s.id, $2, $3, $4, $5 FROM s
    RETURNING id, session_id, (SELECT messages_since_summary FROM s)
    """

# A group's session belongs to the chat: it records no user.
_OPEN_SESSION = text(
    """
    INSERT INTO chat_sessions (user_id, chat_id, chat_type)
    VALUES (CASE WHEN CAST(:chat_type AS varchar) = 'private' THEN CAST(:user_id AS varchar) END,
            :chat_id, :chat_type)
    ON CONFLICT (chat_id) WHERE is_active DO NOTHING
    """
)

# The prompt context of a session: its latest summary and its last `limit` messages (as JSON, so
# one row carries them). Shared by the request's combined statement and by bench/scale.py, which
# EXPLAINs CONTEXT_SQL on a filled database.
_SUMMARY_OF = """
      (SELECT json_build_object('version', version, 'content', content,
                                'last_message_id', last_message_id)
         FROM conversation_summaries WHERE session_id = {session}
         ORDER BY version DESC LIMIT 1)"""
_RECENT_OF = """
      (SELECT coalesce(json_agg(json_build_object('id', id, 'role', role, 'content', content,
                                                  'created_at', created_at, 'user_id', user_id,
                                                  'user_name', user_name,
                                                  'input_mode', input_mode) ORDER BY id), '[]')
         FROM (SELECT id, role, content, created_at, user_id, user_name, input_mode FROM messages
               WHERE session_id = {session} ORDER BY id DESC LIMIT {limit}) recent)"""

# $1 session id, $2 limit.
CONTEXT_SQL = (
    "SELECT"
    + _SUMMARY_OF.format(session="$1")
    + " AS summary,"
    + _RECENT_OF.format(session="$1", limit="$2")
    + " AS recent"
)

# The request's first round trip does everything the model call needs. Incrementing the counter
# and inserting the message in one statement keeps them consistent and, because the UPDATE
# matches only an active session, a message can never land in a session that /start closed a
# moment earlier. The context reads run in the statement's snapshot, which does not contain the
# row being inserted, so they fetch one message less and the caller appends the new one.
# The gate comes first: a blocked user, or one whose day's tokens (the table's and $10, this
# process's not yet written) reach their limit, gets a row with no message and nothing stored.
# Checking in the same statement bounds a budget's overshoot by the requests already in flight.
# The sum runs only when a limit applies, on the index of (user_id, created_at).
# $1 chat id, $2 role, $3 content, $4 tokens, $5 how many older messages, $6 author (the user
# the gate checks), $7 name, $8 start of the user's day, $9 USER_DAILY_TOKEN_LIMIT, $10 tokens
# not yet in llm_usage, $11 input mode ('text' or 'voice').
_APPEND_WITH_CONTEXT = (
    """
    WITH gate AS (
        SELECT coalesce(u.blocked, false) AS blocked,
               coalesce(u.daily_token_limit, $9) AS token_limit
        FROM (SELECT 1) AS one LEFT JOIN bot_users u ON u.user_id = $6
    ), verdict AS (
        SELECT blocked, token_limit,
               CASE WHEN token_limit > 0 AND NOT blocked THEN $10::bigint + (
                   SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM llm_usage
                   WHERE user_id = $6 AND created_at >= $8)
               ELSE 0 END AS spent
        FROM gate
    ), s AS (
        UPDATE chat_sessions SET messages_since_summary = messages_since_summary + 1
        WHERE chat_id = $1 AND is_active
          AND (SELECT NOT blocked AND (token_limit = 0 OR spent < token_limit) FROM verdict)
        RETURNING id, messages_since_summary, chat_type
    ), m AS (
        INSERT INTO messages (session_id, role, content, tokens, user_id, user_name, input_mode)
        SELECT s.id, $2, $3, $4, $6, $7, $11 FROM s
        RETURNING id, session_id, created_at
    )
    SELECT m.id, m.session_id, s.messages_since_summary, m.created_at, s.chat_type,"""
    + _SUMMARY_OF.format(session="m.session_id")
    + " AS summary,"
    + _RECENT_OF.format(session="m.session_id", limit="$5")
    + """ AS recent, v.blocked, v.spent, v.token_limit
    FROM verdict v LEFT JOIN (m CROSS JOIN s) ON true
    """
)

# bench/usage_gate.py EXPLAINs it on a filled database.
APPEND_WITH_CONTEXT_SQL = _APPEND_WITH_CONTEXT


@dataclass(frozen=True, slots=True)
class Gate:
    """What the first statement checks before storing: the writer's ban and day's budget."""

    day_start: datetime
    default_limit: int
    pending_tokens: int

    @classmethod
    def no_limit(cls) -> Gate:
        """Only an operator's ban or limit applies (benchmarks and tools storing directly)."""
        return cls(datetime.now(UTC), default_limit=0, pending_tokens=0)


class Refused(Exception):
    """The gate refused the message (blocked, or the budget is spent); nothing was stored."""

    def __init__(self, *, blocked: bool, spent: int, limit: int) -> None:
        super().__init__(f"refused: blocked={blocked} spent={spent} limit={limit}")
        self.blocked = blocked
        self.spent = spent
        self.limit = limit


async def _fetchrow(conn: AsyncConnection, sql: str, *args: Any) -> Any:
    """One statement straight on the pooled connection's asyncpg driver.

    Every request runs two statements; through SQLAlchemy's execution layer they cost 0.93 ms
    of CPU, on the driver 0.59 ms (1,000 requests, embedded PostgreSQL), about a tenth of the
    backend's CPU per request. Only documented APIs are used: `get_raw_connection()`,
    `driver_connection` and `invalidate()`. Driver errors propagate as they are (the API maps
    them by cause, `db/errors.py`); a lost connection is invalidated, so it never goes back to
    the pool, and raised as DatabaseUnavailable.
    """
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    try:
        return await driver.fetchrow(sql, *args)
    except Exception as exc:
        if driver.is_closed() or lost_connection(exc):
            await conn.invalidate(exc)
            raise DatabaseUnavailable() from exc
        raise


async def fetchrow(conn: AsyncConnection, sql: str, *args: Any) -> Any:
    """`_fetchrow` for the other statements of the request path (memory/facts.py's profile)."""
    return await _fetchrow(conn, sql, *args)


async def append_user_message_with_context(
    conn: AsyncConnection,
    *,
    user_id: str,
    chat_id: str,
    content: str,
    limit: int,
    chat_type: str = "private",
    user_name: str | None = None,
    gate: Gate,
    input_mode: str = "text",
) -> tuple[Appended, Summary | None, list[StoredMessage]]:
    """Store a user message (opening a session if needed) and read the prompt context in one
    round trip: the latest summary and the last `limit` messages, the new one included.

    `chat_type` is the kind a new session gets; an open session keeps the kind it has.
    Raises Refused, storing nothing, when the gate does not let `user_id` write."""
    for _ in range(5):
        row = await _fetchrow(
            conn,
            _APPEND_WITH_CONTEXT,
            chat_id,
            "user",
            content,
            None,
            max(limit - 1, 0),
            user_id,
            user_name,
            gate.day_start,
            gate.default_limit,
            gate.pending_tokens,
            input_mode,
        )
        blocked, spent, token_limit = row[7], row[8], row[9]
        if blocked or (token_limit > 0 and spent >= token_limit):
            raise Refused(blocked=blocked, spent=int(spent), limit=int(token_limit))
        if row[0] is not None:
            appended = Appended(
                session_id=row[1],
                message_id=row[0],
                messages_since_summary=row[2],
                chat_type=row[4],
            )
            summary, recent = _context(row[5], row[6])
            recent.append(
                StoredMessage(
                    id=row[0],
                    role="user",
                    content=content,
                    created_at=row[3],
                    user_id=user_id,
                    user_name=user_name,
                    input_mode=input_mode,
                )
            )
            return appended, summary, recent[-limit:] if limit else []
        # No active session: open one. A concurrent request may win the race (the partial
        # unique index lets only one through); either way the retry finds the active session.
        await conn.execute(
            _OPEN_SESSION, {"user_id": user_id, "chat_id": chat_id, "chat_type": chat_type}
        )
    raise RuntimeError(f"could not open a session for chat {chat_id!r}")  # pragma: no cover


async def append_message_to_session(
    conn: AsyncConnection,
    *,
    session_id: uuid.UUID,
    role: str,
    content: str,
    tokens: int | None,
    user_id: str | None = None,
) -> Appended | None:
    """Store a message in a given session (the reply belongs to the session it answers);
    `user_id` is the user it answers."""
    row = await _fetchrow(conn, _APPEND_TO_SESSION, session_id, role, content, tokens, user_id)
    if row is None:  # the session was deleted meanwhile
        return None
    return Appended(session_id=row[1], message_id=row[0], messages_since_summary=row[2])


def _context(summary_value: Any, recent_value: Any) -> tuple[Summary | None, list[StoredMessage]]:
    summary_raw: Any = _json(summary_value)
    recent_raw: list[dict[str, Any]] = _json(recent_value) or []
    summary = (
        Summary(summary_raw["version"], summary_raw["content"], summary_raw["last_message_id"])
        if summary_raw
        else None
    )
    recent = [
        StoredMessage(
            id=m["id"],
            role=m["role"],
            content=m["content"],
            created_at=datetime.fromisoformat(m["created_at"]) if m.get("created_at") else None,
            user_id=m.get("user_id"),
            user_name=m.get("user_name"),
            input_mode=m.get("input_mode") or "text",
        )
        for m in recent_raw
    ]
    return summary, recent


async def close_sessions_of_chat(conn: AsyncConnection, chat_id: str) -> list[uuid.UUID]:
    result = await conn.execute(
        text(
            "UPDATE chat_sessions SET is_active = false, closed_at = now() "
            "WHERE chat_id = :chat_id AND is_active RETURNING id"
        ),
        {"chat_id": chat_id},
    )
    return [r[0] for r in result]


async def close_session(conn: AsyncConnection, session_id: uuid.UUID) -> list[uuid.UUID]:
    result = await conn.execute(
        text(
            "UPDATE chat_sessions SET is_active = false, closed_at = now() "
            "WHERE id = :session_id AND is_active RETURNING id"
        ),
        {"session_id": session_id},
    )
    return [r[0] for r in result]


def _json(value: Any) -> Any:
    if value is None or not isinstance(value, str | bytes):
        return value
    return orjson.loads(value)
