"""Queueing jobs for the Celery worker from the backend, without delaying replies."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from celery import Celery

from llm_bot_core.background import BackgroundTasks, DaemonThreads
from llm_bot_core.config import Settings
from llm_bot_core.memory.jobs import BrokerHealth
from llm_bot_core.metrics import JOBS

log = logging.getLogger(__name__)


ASKED_MEMO_SIZE = 10_000
# Publishes running at once per backend process (kombu's publish is blocking network I/O).
PUBLISH_THREADS = 4


def summary_lock_key(session_id: uuid.UUID | str) -> str:
    return f"llm_bot_core:summary_queued:{session_id}"


HEALTH_PING_SECONDS = 1.0
"""How long /health waits for the broker's answer to a ping."""


class CeleryJobs:
    """Publishes tasks in background asyncio tasks, so a slow or absent broker never blocks a reply.

    A failed publish is not lost work: the session's counter stays at or above the threshold,
    so the next message queues the job again.
    """

    def __init__(
        self, settings: Settings, *, index_enabled: bool = False, celery: Celery | None = None
    ) -> None:
        from llm_bot_core.worker.app import create_celery

        self._settings = settings
        self._index_enabled = index_enabled
        self._celery = celery or create_celery(settings.worker)
        self._redis = aioredis.Redis.from_url(
            settings.worker.celery_broker_url, socket_timeout=2, socket_connect_timeout=2
        )
        self._tasks = BackgroundTasks(on_failure=_publish_failed)
        self._closing = False
        self._threads = DaemonThreads(PUBLISH_THREADS, "celery-publish")
        # The backlog size at which this process last asked the broker, per session. While the
        # backlog only grows from there, the job is queued or running (the Redis key would say
        # so), so every further message of that session skips the Redis round trip. It asks
        # again once the backlog dropped (a summary landed) or grew by another threshold (the
        # job may have been lost).
        self._asked: OrderedDict[uuid.UUID, int] = OrderedDict()

    def summarize(self, session_id: uuid.UUID, pending: int) -> None:
        if self._closing:
            return
        last = self._asked.get(session_id)
        if last is not None and last < pending < last + self._settings.memory.summary_threshold:
            return
        self._asked[session_id] = pending
        self._asked.move_to_end(session_id)
        if len(self._asked) > ASKED_MEMO_SIZE:
            self._asked.popitem(last=False)
        self._tasks.spawn(self._summarize(session_id), "summary")

    def index(self, message_ids: Sequence[int]) -> None:
        from llm_bot_core.worker.app import INDEX_TASK

        if self._index_enabled and message_ids and not self._closing:
            self._tasks.spawn(self.publish(INDEX_TASK, [list(message_ids)]), "index")

    def extract_facts(self, user_id: str, chat_id: str) -> None:
        from llm_bot_core.worker.app import EXTRACT_FACTS_TASK

        # No dedupe key: a trigger comes once per FACTS_EVERY user messages, and a duplicate
        # job finds the batch done (the watermark moved) before it calls the model.
        if self._closing:
            return
        self._tasks.spawn(self.publish(EXTRACT_FACTS_TASK, [user_id, chat_id]), "facts")

    def describe_pictures(self, message_ids: Sequence[int]) -> None:
        from llm_bot_core.worker.app import DESCRIBE_PICTURES_TASK

        # No dedupe key: the pending row decides, and a duplicate job finds it gone.
        if self._closing or not message_ids:
            return
        self._tasks.spawn(
            self.publish(DESCRIBE_PICTURES_TASK, [list(message_ids)]), "describe_pictures"
        )

    async def _summarize(self, session_id: uuid.UUID) -> None:
        from llm_bot_core.worker.app import SUMMARIZE_TASK

        key = summary_lock_key(session_id)
        try:
            # At most one queued job per session; the key expires in case a worker dies with it.
            lock_seconds = self._settings.worker.summary_lock_seconds
            if not await self._redis.set(key, "1", nx=True, ex=lock_seconds):
                return
        except Exception:
            self._asked.pop(session_id, None)  # the next message must try again
            raise
        try:
            await self.publish(SUMMARIZE_TASK, [str(session_id)])
        except Exception:
            self._asked.pop(session_id, None)
            await self._redis.delete(key)
            raise

    async def publish(self, name: str, args: list[Any]) -> None:
        # kombu's publish is synchronous network I/O: keep it off the event loop.
        # queued_at lets the worker report how long the job waited (llmbot_job_queue_lag_seconds).
        await self._threads.run(
            lambda: self._celery.send_task(name, args=args, kwargs={"queued_at": time.time()})
        )

    async def broker_health(self) -> BrokerHealth:
        try:
            # A health check must answer fast (probes give it a few seconds): a broker that does
            # not answer a ping within a second is reported, not waited for. The client's own
            # socket timeout (2 s) made /health take just over 2 s with a silent broker.
            async with asyncio.timeout(HEALTH_PING_SECONDS):
                await self._redis.ping()
        except Exception as exc:  # any failure is the answer here, not an error
            return BrokerHealth(status="error", detail=type(exc).__name__)
        return BrokerHealth(status="ok")

    async def drain(self) -> None:
        await self._tasks.drain()

    async def shutdown(self, grace: float) -> None:
        # A publish still pending past the grace is dropped like a failed one: the session's
        # counter stays due, so a later message queues it again.
        self._closing = True
        await self._tasks.finish_within(grace)

    async def aclose(self) -> None:
        self._threads.close()
        await self._redis.aclose()


def _publish_failed(task: asyncio.Task[Any], exc: BaseException) -> None:
    JOBS.labels(task.get_name(), "publish_failed").inc()
    log.warning("could not queue a job (will retry on the next message): %r", exc)
