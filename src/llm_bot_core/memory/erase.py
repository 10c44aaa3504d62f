"""Erasing stored memory: one session, or everything of a user, from every store derived from it.

This is the one place that knows all those stores:

    store                                  erased by
    vectors (pgvector table or Qdrant)     SemanticMemory.forget / forget_messages, first
    chat_sessions                          the DELETE below (a user's: their private chats)
    messages, conversation_summaries       ON DELETE CASCADE from chat_sessions
    embeddings (metadata and lexemes)      ON DELETE CASCADE from chat_sessions and messages
    lexical_stats                          the triggers on embeddings (migration 0003)
    rag_outbox                             ON DELETE CASCADE from messages
    facts                                  the DELETEs below: derived from erased messages
                                           (source_message_ids), or all of an erased user's
    fact_extraction (watermarks, costs)    erase_user's DELETE
    llm_usage                              kept, anonymised (erase_user)
    bot_users                              the DELETE in erase_user
    pending_pictures                       ON DELETE CASCADE from messages
    kept pictures (KEEP_IMAGES, DATA_DIR)  the files, after the transaction (memory/pictures.py)
    chat_settings (/mode)                  erase_user's DELETE: their private chats' choice
    usage_daily (dashboard)                kept: per day, model and purpose, nobody's

A group's session belongs to the chat and stays; the user's messages in it (and the answers to
them) are deleted one by one, with the summaries built from them, and the messages indexed with
them as context are indexed again (see erase_user).

Vectors go first: if their store is unreachable this raises and nothing is deleted, so a retry
can finish the job; the reverse order could leave vectors nobody can find to delete. A store keyed
by the user rather than by a session (facts) gets its DELETE in `erase_user`, inside the same
transaction as the sessions.

Usage rows hold no content, only what a call cost; the operator's accounting (tokens and cost per
day, model and purpose) must not change when a user leaves, so erasing a user keeps their rows
and removes who they were: user_id and chat_id become null. Their bot_users row (an operator's
limit or ban) goes: after erasure nothing links the bot to that person; an operator who wants a
ban to outlive the erasure blocks the id again.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_bot_core.config import CONTEXT_TURNS_MAX
from llm_bot_core.memory.facts import lock_user_facts
from llm_bot_core.memory.pictures import forget_kept_message_pictures, forget_kept_pictures
from llm_bot_core.rag.base import Scope, SemanticMemory
from llm_bot_core.usage.ledger import UsageLedger

# The messages are counted in the statement's snapshot, i.e. before the cascade removes them.
_DELETE_SESSIONS = """
WITH gone AS (DELETE FROM chat_sessions WHERE {where} RETURNING id)
SELECT (SELECT count(*) FROM gone),
       (SELECT count(*) FROM messages WHERE session_id IN (SELECT id FROM gone))
"""
_DELETE_SESSION = text(_DELETE_SESSIONS.format(where="id = CAST(:value AS uuid)"))
# A private chat's session has its user; a group's has none (migration 0005).
_DELETE_SESSIONS_OF_USER = text(_DELETE_SESSIONS.format(where="user_id = :value"))
# Facts extracted from a session's messages go with them (a fact also drawn from a message of
# another session goes too: it carries what the erased message said).
# The row locks make a concurrent extraction (which key-share locks its batch's messages) either
# commit first, so the DELETE after this sees its facts, or wait and find the messages gone.
_LOCK_MESSAGES_OF_SESSION = text(
    "SELECT id FROM messages WHERE session_id = CAST(:value AS uuid) FOR UPDATE"
)
_DELETE_FACTS_FROM = text("DELETE FROM facts WHERE source_message_ids && CAST(:ids AS bigint[])")
_DELETE_FACTS_OF_USER = text("DELETE FROM facts WHERE user_id = :value")
_DELETE_EXTRACTION_OF_USER = text("DELETE FROM fact_extraction WHERE user_id = :value")
_ANONYMISE_USAGE = text(
    "UPDATE llm_usage SET user_id = NULL, chat_id = NULL WHERE user_id = :value"
)
# What the user chose for their private chats (/mode); a group's choice is the group's.
_FORGET_CHAT_SETTINGS = text(
    "DELETE FROM chat_settings WHERE chat_id = :value "
    "OR chat_id IN (SELECT chat_id FROM chat_sessions WHERE user_id = :value)"
)
_FORGET_USER = text("DELETE FROM bot_users WHERE user_id = :value")
_PRIVATE_SESSIONS_OF_USER = text("SELECT id FROM chat_sessions WHERE user_id = :value")

# A user's messages in sessions that are not theirs: groups (and anyone else's chat). An
# assistant message carries the user it answers: answers repeat what they answer.
_ELSEWHERE = """
    SELECT m.id, m.session_id FROM messages m JOIN chat_sessions s ON s.id = m.session_id
    WHERE m.user_id = :value AND s.user_id IS DISTINCT FROM :value
"""
_DELETE_ELSEWHERE = text(
    f"DELETE FROM messages WHERE id IN (SELECT id FROM ({_ELSEWHERE}) e) RETURNING id, session_id"
)
# Summaries are progressive, each version built on the previous one: every version from the
# first that covered an erased message on carries what they said. Those go, and the counter is
# recounted from the remaining watermark, so a later message re-summarizes without them.
_FORGET_IN_SUMMARIES = text(
    """
    DELETE FROM conversation_summaries c
    USING (SELECT session_id, min(message_id) AS first
           FROM unnest(CAST(:ids AS bigint[]), CAST(:sessions AS uuid[])) x(message_id, session_id)
           GROUP BY session_id) f
    WHERE c.session_id = f.session_id AND c.last_message_id >= f.first
    """
)
_RECOUNT = text(
    """
    UPDATE chat_sessions s SET messages_since_summary = (
        SELECT count(*) FROM messages m WHERE m.session_id = s.id AND m.id > coalesce(
            (SELECT max(last_message_id) FROM conversation_summaries c WHERE c.session_id = s.id),
            0))
    WHERE s.id = ANY(CAST(:sessions AS uuid[]))
    """
)
# The messages after an erased one were indexed with it as context (RAG_CONTEXT_TURNS preceding
# turns, at most CONTEXT_TURNS_MAX): they are queued to be indexed again without it.
_REINDEX_FOLLOWERS = text(
    f"""
    INSERT INTO rag_outbox (message_id)
    SELECT DISTINCT n.id
    FROM unnest(CAST(:ids AS bigint[]), CAST(:sessions AS uuid[])) x(message_id, session_id)
    CROSS JOIN LATERAL (
        SELECT id FROM messages m
        WHERE m.session_id = x.session_id AND m.id > x.message_id
          AND m.role IN ('user', 'assistant')
        ORDER BY m.id LIMIT {CONTEXT_TURNS_MAX}) n
    ON CONFLICT (message_id) DO UPDATE SET next_attempt_at = now(), attempts = 0
    RETURNING message_id
    """
)


@dataclass(frozen=True, slots=True)
class Erased:
    sessions: int
    messages: int


class EraseService:
    """Deletes a session's or a user's data; raises VectorStoreUnavailable (deleting nothing)
    while the vector store is unreachable."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        semantic: SemanticMemory,
        ledger: UsageLedger,
        data_dir: Path = Path("data"),
    ) -> None:
        self._engine = engine
        self._semantic = semantic
        self._ledger = ledger
        self._data_dir = data_dir  # where KEEP_IMAGES kept pictures

    async def erase_session(self, session_id: uuid.UUID) -> Erased:
        """Delete one session with its messages, summaries and everything indexed from them."""
        await self._semantic.forget(Scope(session_id=session_id))
        async with self._engine.begin() as conn:
            locked = await conn.execute(_LOCK_MESSAGES_OF_SESSION, {"value": str(session_id)})
            await conn.execute(_DELETE_FACTS_FROM, {"ids": [r[0] for r in locked]})
            erased = await _delete_sessions(conn, _DELETE_SESSION, str(session_id))
        await asyncio.to_thread(forget_kept_pictures, self._data_dir, [session_id])
        return erased

    async def erase_user(self, user_id: str) -> Erased:
        """Delete a user's private sessions, and in every other chat their messages and the
        answers to them, with everything derived from them (their facts too); the groups and
        the other members' messages stay."""
        async with self._engine.connect() as conn:
            elsewhere = [r[0] for r in await conn.execute(text(_ELSEWHERE), {"value": user_id})]
        await self._semantic.forget(Scope(user_id=user_id))
        await self._semantic.forget_messages(elsewhere)
        # Records still waiting in this process's ledger are anonymised with the rest.
        await self._ledger.flush()
        async with self._engine.begin() as conn:
            await lock_user_facts(conn, user_id)  # an extraction in flight commits first
            await conn.execute(_DELETE_FACTS_OF_USER, {"value": user_id})
            await conn.execute(_DELETE_EXTRACTION_OF_USER, {"value": user_id})
            sessions = [
                r[0] for r in await conn.execute(_PRIVATE_SESSIONS_OF_USER, {"value": user_id})
            ]
            await conn.execute(_FORGET_CHAT_SETTINGS, {"value": user_id})
            private = await _delete_sessions(conn, _DELETE_SESSIONS_OF_USER, user_id)
            await conn.execute(_ANONYMISE_USAGE, {"value": user_id})
            await conn.execute(_FORGET_USER, {"value": user_id})
            # By author rather than by the ids read above, so a message that arrived meanwhile
            # goes too (a vector written for it in between matches no row, so it is never shown).
            erased = list(await conn.execute(_DELETE_ELSEWHERE, {"value": user_id}))
            reindex: list[int] = []
            if erased:
                positions = {"ids": [r[0] for r in erased], "sessions": [r[1] for r in erased]}
                await conn.execute(_FORGET_IN_SUMMARIES, positions)
                reindex = [r[0] for r in await conn.execute(_REINDEX_FOLLOWERS, positions)]
                await conn.execute(_RECOUNT, {"sessions": sorted(set(positions["sessions"]))})
        await asyncio.to_thread(forget_kept_pictures, self._data_dir, sessions)
        await asyncio.to_thread(
            forget_kept_message_pictures, self._data_dir, [(r[0], r[1]) for r in erased]
        )
        if reindex:
            # Now rather than at the next sweep; deferred, never lost, if the embedder is down.
            await self._semantic.index_messages(reindex)
        return Erased(sessions=private.sessions, messages=private.messages + len(erased))


async def _delete_sessions(conn: AsyncConnection, statement: TextClause, value: str) -> Erased:
    sessions, messages = (await conn.execute(statement, {"value": value})).one()
    return Erased(sessions=int(sessions), messages=int(messages))
