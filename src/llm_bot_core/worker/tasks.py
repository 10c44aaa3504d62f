"""Celery tasks. They take ids, read everything again, and are idempotent."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from celery.signals import (
    task_failure,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings, get_settings
from llm_bot_core.db.engine import create_engine, resolve_database_url
from llm_bot_core.llm.base import ChatModel, LLMUnavailable
from llm_bot_core.llm.openai_compat import build_chat_model
from llm_bot_core.memory.extraction import extract_facts
from llm_bot_core.memory.failures import record_failure
from llm_bot_core.memory.pictures import describe_pictures
from llm_bot_core.memory.summary import summarize_session
from llm_bot_core.metrics import timed_job
from llm_bot_core.rag.base import SemanticMemory
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.usage.ledger import UsageLedger
from llm_bot_core.worker.app import (
    DESCRIBE_PICTURES_TASK,
    EXTRACT_FACTS_TASK,
    INDEX_TASK,
    SUMMARIZE_TASK,
    celery_app,
)
from llm_bot_core.worker.dispatch import summary_lock_key

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Runtime:
    """One event loop and the clients bound to it, per worker process."""

    pid: int
    loop: asyncio.AbstractEventLoop
    settings: Settings
    engine: AsyncEngine
    model: ChatModel
    semantic: SemanticMemory
    redis: redis.Redis
    ledger: UsageLedger


_runtime: _Runtime | None = None


def runtime() -> _Runtime:
    # Built lazily per process (prefork children and the solo pool alike), never per task.
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        settings = get_settings()
        loop = asyncio.new_event_loop()
        engine = create_engine(resolve_database_url(settings.storage), settings.storage)
        semantic = loop.run_until_complete(
            build_semantic_memory(
                settings.rag, engine, data_dir=settings.storage.data_dir, sweeper=False
            )
        )
        _runtime = _Runtime(
            pid=os.getpid(),
            loop=loop,
            settings=settings,
            engine=engine,
            model=build_chat_model(settings.llm),
            semantic=semantic,
            redis=redis.Redis.from_url(settings.worker.celery_broker_url),
            ledger=UsageLedger(engine, interval=settings.usage.usage_flush_interval_ms / 1000),
        )
    return _runtime


@worker_process_init.connect
def _build_in_pool_process(**_: Any) -> None:
    # Each prefork child builds its clients (and loads a local embedder) when it starts, not
    # while its first task waits, so that cost never lands on the first jobs of a busy worker.
    runtime()


@worker_ready.connect
def _build_in_solo_worker(sender: Any = None, **_: Any) -> None:
    # The solo pool runs tasks in the main process, which gets no worker_process_init.
    pool_cls = getattr(sender, "pool_cls", None)
    if getattr(pool_cls, "__module__", "") == "celery.concurrency.solo":
        runtime()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _flush_usage(**_: Any) -> None:
    # Tasks flush their own records; this catches any a failed flush kept for a retry.
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.loop.run_until_complete(_runtime.ledger.aclose())


@task_failure.connect
def _record_failure(
    sender: Any = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    # Sent once a task fails for good: a retried attempt raises Retry, not this signal.
    if sender is None or exception is None:
        return
    request = getattr(sender, "request", None)
    attempts = (getattr(request, "retries", 0) or 0) + 1
    run(
        record_failure(
            runtime().engine,
            task=sender.name,
            arguments={"args": list(args or ()), "kwargs": dict(kwargs or {})},
            error=exception,
            attempts=attempts,
        )
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return runtime().loop.run_until_complete(coro)


@celery_app.task(
    name=SUMMARIZE_TASK,
    autoretry_for=(LLMUnavailable, OSError),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=8,
)
def summarize_session_task(session_id: str, queued_at: float | None = None) -> int:
    """Write the summary versions a session is due; returns how many were written."""
    rt = runtime()
    sid = uuid.UUID(session_id)
    try:
        result = run(
            timed_job(
                "summary",
                queued_at,
                lambda: summarize_session(
                    rt.engine, rt.model, rt.settings.memory, sid, ledger=rt.ledger
                ),
            )
        )
    finally:
        # Between tasks this process's loop does not run, so the ledger's timer would not
        # fire: the task writes its usage before it is acknowledged.
        run(rt.ledger.flush())
        # Let the next message queue a new job (the dedupe key only avoids piling up duplicates).
        try:
            rt.redis.delete(summary_lock_key(session_id))
        except redis.RedisError:
            log.warning("could not clear the summary lock of %s", session_id)
    return result.versions_written


@celery_app.task(name=INDEX_TASK, autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def index_messages_task(message_ids: list[int], queued_at: float | None = None) -> int:
    """Index stored messages into semantic memory (idempotent)."""
    rt = runtime()
    return run(timed_job("index", queued_at, lambda: rt.semantic.index_messages(message_ids)))


@celery_app.task(
    name=EXTRACT_FACTS_TASK,
    autoretry_for=(LLMUnavailable, OSError),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=8,
)
def extract_facts_task(user_id: str, chat_id: str, queued_at: float | None = None) -> int:
    """Extract facts from the user's pending batches in a chat; returns how many batches ran."""
    rt = runtime()
    try:
        result = run(
            timed_job(
                "facts",
                queued_at,
                lambda: extract_facts(
                    rt.engine,
                    rt.model,
                    rt.settings.memory,
                    user_id,
                    chat_id,
                    fts_config=rt.settings.rag.rag_fts_config,
                    ledger=rt.ledger,
                    semantic=rt.semantic,
                ),
            )
        )
    finally:
        run(rt.ledger.flush())  # as summarize_session_task: written before the ack
    return result.batches


@celery_app.task(
    name=DESCRIBE_PICTURES_TASK,
    autoretry_for=(LLMUnavailable, OSError),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=8,
)
def describe_pictures_task(message_ids: list[int], queued_at: float | None = None) -> int:
    """Describe the pending pictures of these messages (and stale ones); returns how many
    messages got their descriptions."""
    rt = runtime()
    try:
        result = run(
            timed_job(
                "pictures",
                queued_at,
                lambda: describe_pictures(
                    rt.engine, rt.model, rt.settings.pictures, message_ids, ledger=rt.ledger
                ),
            )
        )
    finally:
        run(rt.ledger.flush())  # as summarize_session_task: written before the ack
    if result.described and rt.semantic.enabled:
        # The description changed the messages' text: index them again now.
        run(rt.semantic.index_messages(result.described))
    return len(result.described)
