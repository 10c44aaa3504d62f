"""Background work queued after a request's transaction commits: summaries, indexing, facts."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.background import BackgroundTasks
from llm_bot_core.config import MemorySettings, PictureSettings
from llm_bot_core.llm.base import ChatModel
from llm_bot_core.memory.extraction import extract_facts
from llm_bot_core.memory.failures import record_failure
from llm_bot_core.memory.pictures import describe_pictures
from llm_bot_core.memory.summary import summarize_session
from llm_bot_core.metrics import timed_job
from llm_bot_core.rag.base import SemanticMemory
from llm_bot_core.usage.ledger import UsageLedger

log = logging.getLogger(__name__)

# The names the Celery tasks have too (worker/app.py), so job_failures reads the same either way.
SUMMARIZE_JOB = "memory.summarize_session"
EXTRACT_FACTS_JOB = "memory.extract_facts"


@dataclass(frozen=True, slots=True)
class BrokerHealth:
    """The state of the broker jobs travel through, as GET /health reports it."""

    status: Literal["ok", "error", "disabled"]
    detail: str | None = None


class JobQueue(Protocol):
    def summarize(self, session_id: uuid.UUID, pending: int) -> None:
        """Queue summarization of a session with `pending` unsummarized messages.

        Returns at once and never raises.
        """
        ...

    def index(self, message_ids: Sequence[int]) -> None:
        """Queue semantic indexing of stored messages; returns at once and never raises."""
        ...

    def extract_facts(self, user_id: str, chat_id: str) -> None:
        """Queue fact extraction from a user's messages in a chat; returns at once and never
        raises (a lost job is queued again by a later message: the watermark keeps the work)."""
        ...

    def describe_pictures(self, message_ids: Sequence[int]) -> None:
        """Queue the description of these messages' pending pictures; returns at once and never
        raises (a lost job leaves the rows pending: a later job's sweep takes them up)."""
        ...

    async def drain(self) -> None:
        """Wait for work this process started (tests)."""
        ...

    async def shutdown(self, grace: float) -> None:
        """Stop taking work and end within about `grace` seconds; what is dropped stays due
        (in the database or the outbox), so a later message or the next start redoes it."""
        ...

    async def broker_health(self) -> BrokerHealth:
        """Whether the broker is reachable ("disabled" when there is none); never raises."""
        ...

    async def aclose(self) -> None:
        """Release the queue's own clients, after drain."""
        ...


class InProcessJobs:
    """Runs jobs as asyncio tasks in the backend process, after the reply has been sent."""

    def __init__(
        self,
        engine: AsyncEngine,
        model: ChatModel,
        settings: MemorySettings,
        semantic: SemanticMemory,
        ledger: UsageLedger,
        *,
        fts_config: str,
        pictures: PictureSettings | None = None,
    ) -> None:
        self._engine = engine
        self._pictures = pictures or PictureSettings()
        self._ledger = ledger
        self._model = model
        self._settings = settings
        self._semantic = semantic
        self._fts_config = fts_config  # RAG_FTS_CONFIG, for the facts a batch is compared with
        self._tasks = BackgroundTasks(on_failure=_log_failure)
        # One summarizer per session at a time in this process; the job itself is safe to run
        # concurrently, this only avoids paying the LLM twice for the same chunk.
        self._summarizing: set[uuid.UUID] = set()
        self._extracting: set[tuple[str, str]] = set()
        # Summaries share the event loop with the replies. Bounding how many run at once keeps
        # their database work from crowding out requests under load; a waiting job loses
        # nothing, it covers more messages (up to SUMMARY_NEW_MESSAGES_LIMIT) when it runs.
        self._summary_slots = asyncio.Semaphore(settings.summary_concurrency)
        self._waiting: set[asyncio.Task[Any]] = set()
        self._indexing: set[asyncio.Task[Any]] = set()
        self._closing = False

    def summarize(self, session_id: uuid.UUID, pending: int) -> None:
        if self._closing or session_id in self._summarizing:
            return
        self._summarizing.add(session_id)
        self._tasks.spawn(self._summarize(session_id, time.time()), f"summarize {session_id}")

    def index(self, message_ids: Sequence[int]) -> None:
        if self._semantic.enabled and message_ids and not self._closing:
            ids = list(message_ids)
            task = self._tasks.spawn(
                timed_job("index", time.time(), lambda: self._semantic.index_messages(ids)),
                "index messages",
            )
            self._indexing.add(task)
            task.add_done_callback(self._indexing.discard)

    def extract_facts(self, user_id: str, chat_id: str) -> None:
        key = (user_id, chat_id)
        if self._closing or key in self._extracting:
            return
        self._extracting.add(key)
        self._tasks.spawn(self._extract(key, time.time()), f"extract facts {user_id}")

    def describe_pictures(self, message_ids: Sequence[int]) -> None:
        if not self._closing and message_ids:
            ids = list(message_ids)
            self._tasks.spawn(self._describe(ids, time.time()), f"describe pictures {ids}")

    async def _describe(self, message_ids: list[int], queued_at: float) -> None:
        task = asyncio.current_task()
        assert task is not None  # always run as a task of its own (spawn)
        self._waiting.add(task)  # cancelled at shutdown while waiting: the rows stay pending
        try:
            # Shares the summaries' slots: an LLM call off the reply path.
            async with self._summary_slots:
                self._waiting.discard(task)
                run = await timed_job(
                    "pictures",
                    queued_at,
                    lambda: describe_pictures(
                        self._engine, self._model, self._pictures, message_ids,
                        ledger=self._ledger,
                    ),
                )  # fmt: skip
        finally:
            self._waiting.discard(task)
        # The description changed the message's text: index it again now, not at the sweep.
        self.index(run.described)

    async def _extract(self, key: tuple[str, str], queued_at: float) -> None:
        task = asyncio.current_task()
        assert task is not None  # always run as a task of its own (spawn)
        self._waiting.add(task)  # cancelled at shutdown while waiting: the watermark keeps it
        try:
            # Shares the summaries' slots: both are LLM calls off the reply path.
            async with self._summary_slots:
                self._waiting.discard(task)
                await timed_job(
                    "facts",
                    queued_at,
                    lambda: extract_facts(
                        self._engine,
                        self._model,
                        self._settings,
                        *key,
                        fts_config=self._fts_config,
                        ledger=self._ledger,
                        semantic=self._semantic,
                    ),
                )
        except Exception as exc:
            # No retry in-process: this attempt was the last one.
            await record_failure(
                self._engine, task=EXTRACT_FACTS_JOB, arguments=list(key), error=exc
            )
            raise
        finally:
            self._waiting.discard(task)
            self._extracting.discard(key)

    async def _summarize(self, session_id: uuid.UUID, queued_at: float) -> None:
        task = asyncio.current_task()
        assert task is not None  # always run as a task of its own (spawn)
        self._waiting.add(task)
        try:
            async with self._summary_slots:
                self._waiting.discard(task)
                await timed_job(
                    "summary",
                    queued_at,
                    lambda: summarize_session(
                        self._engine, self._model, self._settings, session_id, ledger=self._ledger
                    ),
                )
        except Exception as exc:
            await record_failure(
                self._engine, task=SUMMARIZE_JOB, arguments=[str(session_id)], error=exc
            )
            raise
        finally:
            self._waiting.discard(task)
            self._summarizing.discard(session_id)

    async def drain(self) -> None:
        await self._tasks.drain()

    async def shutdown(self, grace: float) -> None:
        # Indexing jobs are already durable in the outbox (a cancelled one hands its rows back,
        # see Indexer.index) and summaries waiting for a slot stay due in the database: only
        # the summaries already talking to the LLM are worth waiting for, and only briefly.
        self._closing = True
        for task in self._indexing | self._waiting:
            task.cancel()
        await self._tasks.finish_within(grace)

    async def broker_health(self) -> BrokerHealth:
        return BrokerHealth(status="disabled", detail="summaries run in-process")

    async def aclose(self) -> None:
        return None  # the engine, model and semantic memory belong to the caller


def _log_failure(task: asyncio.Task[Any], exc: BaseException) -> None:
    # The counter stays at or above the threshold, so the next message queues it again.
    log.warning("background job %s failed: %r", task.get_name(), exc)
