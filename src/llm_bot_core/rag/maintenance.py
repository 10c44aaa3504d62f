"""Maintenance of semantic memory: rebuild the vector store in the current embedding space.

Erasing a user's data is not here: it is a use case of the conversation store (memory/erase.py),
which asks semantic memory to forget the vectors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
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

    memory = await build_semantic_memory(
        settings.rag, engine, data_dir=settings.storage.data_dir, sweeper=False
    )
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

