"""Background work queued after a request's transaction commits: summaries and indexing."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.llm.base import ChatModel
from llm_bot_core.memory.summary import summarize_session
from llm_bot_core.metrics import timed_job
from llm_bot_core.rag.base import SemanticMemory

log = logging.getLogger(__name__)


class JobQueue(Protocol):
    def summarize(self, session_id: uuid.UUID, pending: int) -> None:
        """Queue summarization of a session with `pending` unsummarized messages.

        Returns at once and never raises.
        """
        ...

    def index(self, message_ids: Sequence[int]) -> None:
        """Queue semantic indexing of stored messages; returns at once and never raises."""
        ...

    async def drain(self) -> None:
        """Wait for work this process started (tests, shutdown)."""
        ...


class InProcessJobs:
    """Runs jobs as asyncio tasks in the backend process, after the reply has been sent."""

    def __init__(
        self,
        engine: AsyncEngine,
        model: ChatModel,
        settings: Settings,
        semantic: SemanticMemory,
    ) -> None:
        self._engine = engine
        self._model = model
        self._settings = settings
        self._semantic = semantic
        self._tasks: set[asyncio.Task[Any]] = set()
        # One summarizer per session at a time in this process; the job itself is safe to run
        # concurrently, this only avoids paying the LLM twice for the same chunk.
        self._summarizing: set[uuid.UUID] = set()
        # Summaries share the event loop with the replies. Bounding how many run at once keeps
        # their database work from crowding out requests under load; a waiting job loses
        # nothing, it covers more messages (up to SUMMARY_NEW_MESSAGES_LIMIT) when it runs.
        self._summary_slots = asyncio.Semaphore(settings.summary_concurrency)
        self._waiting: set[asyncio.Task[Any]] = set()

    def summarize(self, session_id: uuid.UUID, pending: int) -> None:
        if session_id in self._summarizing:
            return
        self._summarizing.add(session_id)
        self._spawn(self._summarize(session_id, time.time()), f"summarize {session_id}")

    def index(self, message_ids: Sequence[int]) -> None:
        if self._semantic.enabled and message_ids:
            ids = list(message_ids)
            self._spawn(
                timed_job("index", time.time(), lambda: self._semantic.index_messages(ids)),
                "index messages",
            )

    async def _summarize(self, session_id: uuid.UUID, queued_at: float) -> None:
        task = asyncio.current_task()
        assert task is not None  # always run as a task of its own (_spawn)
        self._waiting.add(task)
        try:
            async with self._summary_slots:
                self._waiting.discard(task)
                await timed_job(
                    "summary",
                    queued_at,
                    lambda: summarize_session(
                        self._engine, self._model, self._settings, session_id
                    ),
                )
        finally:
            self._waiting.discard(task)
            self._summarizing.discard(session_id)

    def _spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.create_task(coro, name=what)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The counter stays at or above the threshold, so the next message queues it again.
            log.warning("background job %s failed: %r", task.get_name(), task.exception())

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def drop_waiting(self) -> None:
        """At shutdown: forget summaries still waiting for a slot (they stay due in the
        database and the next message queues them again); running ones are drained."""
        for task in list(self._waiting):
            task.cancel()
