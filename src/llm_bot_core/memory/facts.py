"""User facts: the profile every prompt carries, and the user's and operators' edits.

A fact is current while `superseded_at` is NULL. A correction writes a new row and points the
old one at it, so history stays answerable; deleting (the API, /forget) removes the fact and
the versions it superseded, so forgotten text is in no table and no prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import zip_longest
from typing import Any, Literal

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_bot_core.errors import CoreError
from llm_bot_core.memory.store import fetchrow
from llm_bot_core.rag.base import RecalledFact

Source = Literal["extracted", "user", "operator"]
# The importance of a fact the user or an operator wrote: above anything extraction guesses.
WRITTEN_IMPORTANCE = 1.0
RELATED_LIMIT = 3
# The facts past the budget whose vectors recall ranks (rag/fact_index.py): the best-ranked ones.
OVERFLOW_LIMIT = 500
# Two wordings whose word sets overlap this much (Jaccard) are one fact.
NEAR_DUPLICATE = 0.8


@dataclass(frozen=True, slots=True)
class FactRecord:
    id: int
    content: str
    source: str
    created_at: datetime
    superseded_at: datetime | None
    superseded_by: int | None


@dataclass(frozen=True, slots=True)
class Profile:
    """What a prompt shows of the user's facts: `lines` in the system message, `related` (facts
    past the budget that match the message) in the recalled memory."""

    lines: list[str]
    related: list[RecalledFact]
    overflow_ids: list[int]
    """The facts past the budget (best-ranked first), for recall by meaning."""


class FactNotFound(CoreError):
    code = "fact_not_found"


def approx_tokens(value: str) -> int:
    """A provider-independent estimate (about four characters per token)."""
    return len(value) // 4 + 1


def normalized_words(value: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", value.casefold()))


def is_duplicate(candidate: str, known: Sequence[str]) -> bool:
    """Exact (up to case, spacing and punctuation) or near duplicates of a known fact."""
    words = normalized_words(candidate)
    for other in known:
        theirs = normalized_words(other)
        if words == theirs:
            return True
        union = words | theirs
        if union and len(words & theirs) / len(union) >= NEAR_DUPLICATE:
            return True
    return False


# --- the profile, on the request path --------------------------------------------------------

# $1 user, $2 every chat's facts (private chat, or FACTS_IN_GROUPS), $3 this chat, $4 text search
# configuration, $5 the user's message, $6 the budget in tokens. The profile is the longest prefix
# of the ranking (importance, then recency) within the budget, each line costing what
# `approx_tokens(profile_line(...))` says: `- ` + content + ` (since YYYY-MM-DD)` is 21 characters
# more than the content. Past the budget, the facts that share lexemes with the message (ORed in
# the 'simple' configuration, which leaves them as stemmed), best `ts_rank` first. Lexemes are
# the stored ones, or computed from the content after an edit outside the app, so an edit or a
# deletion counts at once. Only what the prompt shows leaves the database.
PROFILE_SQL = f"""
    WITH f AS (
        SELECT id, content, created_at, lexemes,
               sum((length(content) + 21) / 4 + 1)
                   OVER (ORDER BY importance DESC, created_at DESC, id DESC) AS used
        FROM facts
        WHERE user_id = $1 AND superseded_at IS NULL AND ($2 OR chat_id = $3)
    ), q AS (
        SELECT to_tsquery('simple', nullif(string_agg(quote_literal(l), ' | '), '')) AS q
        FROM unnest(tsvector_to_array(to_tsvector(CAST($4 AS regconfig), $5))) l
    )
    SELECT
      (SELECT coalesce(json_agg(json_build_array(id, content, created_at) ORDER BY used), '[]')
         FROM f WHERE used <= $6) AS profile,
      (SELECT coalesce(json_agg(json_build_array(id, content, created_at, rank)
                                ORDER BY rank DESC), '[]')
         FROM (SELECT f.id, f.content, f.created_at, ts_rank(v.v, q.q) AS rank
               FROM f CROSS JOIN q
               CROSS JOIN LATERAL (SELECT coalesce(f.lexemes,
                                                   to_tsvector(CAST($4 AS regconfig), f.content))
                                   AS v) v
               WHERE f.used > $6 AND v.v @@ q.q
               ORDER BY rank DESC LIMIT {RELATED_LIMIT}) r) AS related,
      (SELECT coalesce(json_agg(id ORDER BY used), '[]')
         FROM (SELECT id, used FROM f WHERE used > $6 ORDER BY used LIMIT {OVERFLOW_LIMIT}) o)
         AS overflow
"""


async def read_profile(
    conn: AsyncConnection,
    *,
    user_id: str,
    chat_id: str,
    all_chats: bool,
    fts_config: str,
    message: str,
    budget: int,
) -> Profile:
    """The user's current facts within `budget` tokens, and the best lexical matches of the
    message among the rest (one statement)."""
    row = await fetchrow(
        conn, PROFILE_SQL, user_id, all_chats, chat_id, fts_config, message, budget
    )
    lines = [profile_line(i[1], _when(i[2])) for i in _json(row[0]) or []]
    related = [
        RecalledFact(
            message_id=-i[0],
            role="user",
            content=i[1],
            created_at=_when(i[2]),
            score=float(i[3]),
        )
        for i in _json(row[1]) or []
    ]
    return Profile(lines=lines, related=related, overflow_ids=list(_json(row[2]) or []))


def related_facts(
    lexical: Sequence[RecalledFact], recalled: Sequence[RecalledFact]
) -> tuple[list[RecalledFact], list[RecalledFact]]:
    """The facts past the budget a prompt shows (RELATED_LIMIT of them, taken in turn from the
    lexical and the semantic ranking, each once), and the recalled messages."""
    semantic = [f for f in recalled if f.message_id < 0]
    messages = [f for f in recalled if f.message_id >= 0]
    chosen: dict[int, RecalledFact] = {}
    for pair in zip_longest(lexical, semantic):
        for fact in pair:
            if fact is not None and len(chosen) < RELATED_LIMIT:
                chosen.setdefault(fact.message_id, fact)
    return list(chosen.values()), messages


def profile_line(content: str, created_at: datetime | None) -> str:
    when = created_at.strftime("%Y-%m-%d") if created_at else "earlier"
    return f"- {content} (since {when})"


def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


# --- the user's and operators' edits -------------------------------------------------------

_COLUMNS = "id, content, source, created_at, superseded_at, superseded_by"
_LIST = text(
    f"SELECT {_COLUMNS} FROM facts WHERE user_id = :user_id "
    "AND (:history OR superseded_at IS NULL) ORDER BY created_at, id"
)
_CURRENT_CONTENTS = text(
    f"SELECT {_COLUMNS} FROM facts WHERE user_id = :user_id AND superseded_at IS NULL"
)
_INSERT = text(
    f"""
    INSERT INTO facts (user_id, content, source, importance, chat_id, source_message_ids,
                       lexemes)
    VALUES (:user_id, :content, :source, :importance, :chat_id,
            CAST(:message_ids AS bigint[]), to_tsvector(CAST(:cfg AS regconfig), :content))
    RETURNING {_COLUMNS}
    """
)
_SUPERSEDE = text(
    "UPDATE facts SET superseded_at = now(), superseded_by = :successor "
    "WHERE id = :id AND user_id = :user_id AND superseded_at IS NULL RETURNING id"
)
_LOCK_CURRENT = text(
    "SELECT id, importance, chat_id FROM facts "
    "WHERE id = :id AND user_id = :user_id AND superseded_at IS NULL FOR UPDATE"
)
# A fact and every version it superseded (its history): all of it is the forgotten text.
_DELETE_WITH_HISTORY = text(
    """
    WITH RECURSIVE chain AS (
        SELECT id FROM facts WHERE id = :id AND user_id = :user_id
        UNION
        SELECT f.id FROM facts f JOIN chain c ON f.superseded_by = c.id
    )
    DELETE FROM facts WHERE id IN (SELECT id FROM chain) RETURNING id
    """
)


class FactService:
    """Reading and editing a user's facts (the API, the bot's commands, tests)."""

    def __init__(self, engine: AsyncEngine, *, fts_config: str) -> None:
        self._engine = engine
        self._cfg = fts_config

    async def list(self, user_id: str, *, history: bool = False) -> list[FactRecord]:
        """Current facts, oldest first; with `history` the superseded versions too."""
        async with self._engine.connect() as conn:
            result = await conn.execute(_LIST, {"user_id": user_id, "history": history})
            return [FactRecord(*r) for r in result]

    async def add(self, user_id: str, content: str, *, source: Source = "user") -> FactRecord:
        """Store a fact in the user's words; a duplicate of a current fact returns that one."""
        async with self._engine.begin() as conn:
            await lock_user_facts(conn, user_id)
            current = [
                FactRecord(*r) for r in await conn.execute(_CURRENT_CONTENTS, {"user_id": user_id})
            ]
            for fact in current:
                if is_duplicate(content, [fact.content]):
                    return fact
            return await insert_fact(
                conn,
                user_id,
                content,
                source=source,
                importance=WRITTEN_IMPORTANCE,
                fts_config=self._cfg,
            )

    async def replace(
        self, user_id: str, fact_id: int, content: str, *, source: Source = "user"
    ) -> FactRecord:
        """Write a new version of a current fact; the old one points at it."""
        async with self._engine.begin() as conn:
            old = (await conn.execute(_LOCK_CURRENT, {"id": fact_id, "user_id": user_id})).first()
            if old is None:
                raise FactNotFound(f"user {user_id!r} has no current fact {fact_id}")
            new = await insert_fact(
                conn,
                user_id,
                content,
                source=source,
                importance=max(old[1], WRITTEN_IMPORTANCE),
                fts_config=self._cfg,
                chat_id=old[2],
            )
            await supersede(conn, user_id, fact_id, successor=new.id)
            return new

    async def delete(self, user_id: str, fact_id: int) -> int:
        """Delete a fact with its history; returns how many rows went."""
        async with self._engine.begin() as conn:
            gone = list(
                await conn.execute(_DELETE_WITH_HISTORY, {"id": fact_id, "user_id": user_id})
            )
        if not gone:
            raise FactNotFound(f"user {user_id!r} has no fact {fact_id}")
        return len(gone)


async def lock_user_facts(conn: AsyncConnection, user_id: str) -> None:
    # Serializes writers of one user's facts (API, extraction), so a duplicate check and the
    # insert after it cannot interleave with another writer's.
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('facts:' || :u))"), {"u": user_id}
    )


async def insert_fact(
    conn: AsyncConnection,
    user_id: str,
    content: str,
    *,
    source: Source,
    importance: float,
    fts_config: str,
    chat_id: str | None = None,
    message_ids: Sequence[int] = (),
) -> FactRecord:
    row = (
        await conn.execute(
            _INSERT,
            {
                "user_id": user_id,
                "content": content,
                "source": source,
                "importance": min(max(importance, 0.0), 1.0),
                "chat_id": chat_id,
                "message_ids": list(message_ids),
                "cfg": fts_config,
            },
        )
    ).one()
    return FactRecord(*row)


async def supersede(
    conn: AsyncConnection, user_id: str, fact_id: int, *, successor: int | None
) -> bool:
    """Mark a current fact as superseded (by `successor`, or retracted when None)."""
    done = await conn.execute(
        _SUPERSEDE, {"id": fact_id, "user_id": user_id, "successor": successor}
    )
    return done.first() is not None
