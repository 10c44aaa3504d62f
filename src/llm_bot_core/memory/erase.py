"""Erasing stored memory: one session, or everything of a user, from every store derived from it.

This is the one place that knows all those stores:

    store                                  erased by
    vectors (pgvector table or Qdrant)     SemanticMemory.forget, first
    chat_sessions                          the DELETE below
    messages, conversation_summaries       ON DELETE CASCADE from chat_sessions
    embeddings (metadata and lexemes)      ON DELETE CASCADE from chat_sessions and messages
    lexical_stats                          the triggers on embeddings (migration 0003)
    rag_outbox                             ON DELETE CASCADE from messages

Vectors go first: if their store is unreachable this raises and nothing is deleted, so a retry
can finish the job; the reverse order could leave vectors nobody can find to delete. A new store
keyed by the user rather than by a session (facts, say) gets its DELETE in `erase_user`, inside
the same transaction as the sessions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_bot_core.rag.base import Scope, SemanticMemory

# The messages are counted in the statement's snapshot, i.e. before the cascade removes them.
_DELETE_SESSIONS = """
WITH gone AS (DELETE FROM chat_sessions WHERE {where} RETURNING id)
SELECT (SELECT count(*) FROM gone),
       (SELECT count(*) FROM messages WHERE session_id IN (SELECT id FROM gone))
"""
_DELETE_SESSION = text(_DELETE_SESSIONS.format(where="id = CAST(:value AS uuid)"))
_DELETE_SESSIONS_OF_USER = text(_DELETE_SESSIONS.format(where="user_id = :value"))


@dataclass(frozen=True, slots=True)
class Erased:
    sessions: int
    messages: int


class EraseService:
    """Deletes a session's or a user's data; raises VectorStoreUnavailable (deleting nothing)
    while the vector store is unreachable."""

    def __init__(self, *, engine: AsyncEngine, semantic: SemanticMemory) -> None:
        self._engine = engine
        self._semantic = semantic

    async def erase_session(self, session_id: uuid.UUID) -> Erased:
        """Delete one session with its messages, summaries and everything indexed from them."""
        await self._semantic.forget(Scope(session_id=session_id))
        async with self._engine.begin() as conn:
            return await _delete_sessions(conn, _DELETE_SESSION, str(session_id))

    async def erase_user(self, user_id: str) -> Erased:
        """Delete every session of a user with everything derived from them."""
        await self._semantic.forget(Scope(user_id=user_id))
        async with self._engine.begin() as conn:
            return await _delete_sessions(conn, _DELETE_SESSIONS_OF_USER, user_id)


async def _delete_sessions(conn: AsyncConnection, statement: TextClause, value: str) -> Erased:
    sessions, messages = (await conn.execute(statement, {"value": value})).one()
    return Erased(sessions=int(sessions), messages=int(messages))
