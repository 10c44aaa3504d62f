"""Maintenance of semantic memory: rebuild the vector store, erase a session's or a user's data."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.rag.base import Scope, SemanticMemory
from llm_bot_core.rag.memory import VectorSemanticMemory

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReindexReport:
    queued: int
    indexed: int
    pending: int
    seconds: float
    description: str


async def reindex(settings: Settings, engine: AsyncEngine, *, batch: int = 256) -> ReindexReport:
    """Embed every stored conversation message into the current embedding space.

    Safe to run while the backend serves: rows are upserted by message id, and the outbox lease
    keeps the backend's own indexer off the rows this run is working on.
    """
    from llm_bot_core.rag.factory import build_semantic_memory

    memory = await build_semantic_memory(settings, engine, sweeper=False)
    if not isinstance(memory, VectorSemanticMemory):
        await memory.aclose()
        raise RuntimeError("semantic memory is off (see the warnings above): nothing to reindex")
    try:
        started = time.perf_counter()
        indexer, _ = await memory.ready()
        queued = await indexer.enqueue_all()
        indexed = 0
        while (done := await indexer.index(None, limit=batch)) > 0:
            indexed += done
            log.info("reindexed %d/%d messages", indexed, queued)
        pending, _ = await indexer.pending()
        return ReindexReport(
            queued=queued,
            indexed=indexed,
            pending=pending,
            seconds=round(time.perf_counter() - started, 2),
            description=memory.description,
        )
    finally:
        await memory.aclose()


@dataclass(frozen=True, slots=True)
class Erased:
    sessions: int
    messages: int


async def erase(engine: AsyncEngine, semantic: SemanticMemory, scope: Scope) -> Erased:
    """Delete the sessions (with messages, summaries, embeddings) of a session id or a user.

    Vectors go first: if the vector store is unreachable this raises and nothing is deleted, so
    a retry can finish the job; the reverse order could leave vectors nobody can find to delete.
    """
    column, value = scope.field()
    if column not in ("user_id", "session_id"):
        raise ValueError("erase by user_id or session_id")
    await semantic.forget(scope)
    where = "id = CAST(:value AS uuid)" if column == "session_id" else "user_id = :value"
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    f"""WITH gone AS (DELETE FROM chat_sessions WHERE {where} RETURNING id)
                SELECT (SELECT count(*) FROM gone),
                       (SELECT count(*) FROM messages WHERE session_id IN (SELECT id FROM gone))"""
                ),
                {"value": value},
            )
        ).one()
    return Erased(sessions=int(row[0]), messages=int(row[1]))
