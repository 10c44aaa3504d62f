"""Queueing summary jobs on the real Redis broker: one job per due session, few broker calls."""

from __future__ import annotations

import uuid

import pytest
import redis
from prometheus_client import REGISTRY

from llm_bot_core.config import Settings
from llm_bot_core.worker.dispatch import CeleryJobs, summary_lock_key

pytestmark = [pytest.mark.asyncio, pytest.mark.celery]

THRESHOLD = 24


@pytest.fixture
def queue() -> str:
    return f"llmbot-dispatch-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(redis_url: str, queue: str) -> Settings:
    return Settings(
        _env_file=None,
        celery_broker_url=redis_url,
        celery_queue=queue,
        summary_threshold=THRESHOLD,
    )


async def test_a_growing_backlog_asks_the_broker_once_per_threshold(
    redis_url: str, queue: str, settings: Settings
) -> None:
    jobs = CeleryJobs(settings)
    broker = redis.Redis.from_url(redis_url)
    session = uuid.uuid4()
    try:
        jobs.summarize(session, THRESHOLD)
        await jobs.drain()
        assert broker.llen(queue) == 1

        # The worker finished (it clears the key) but the backlog only grew meanwhile: this
        # process does not ask again until it grew by another threshold...
        broker.delete(summary_lock_key(session))
        for pending in range(THRESHOLD + 1, 2 * THRESHOLD):
            jobs.summarize(session, pending)
        await jobs.drain()
        assert broker.llen(queue) == 1
        assert not broker.exists(summary_lock_key(session))

        # ...then it does, in case the job was lost.
        jobs.summarize(session, 2 * THRESHOLD)
        await jobs.drain()
        assert broker.llen(queue) == 2

        # A summary landed (the backlog dropped) and the session is due again: asked at once.
        broker.delete(summary_lock_key(session))
        jobs.summarize(session, THRESHOLD)
        await jobs.drain()
        assert broker.llen(queue) == 3
    finally:
        broker.delete(queue, summary_lock_key(session))
        await jobs.aclose()


async def test_a_queued_job_is_not_queued_twice_by_another_process(
    redis_url: str, queue: str, settings: Settings
) -> None:
    first, second = CeleryJobs(settings), CeleryJobs(settings)
    broker = redis.Redis.from_url(redis_url)
    session = uuid.uuid4()
    try:
        first.summarize(session, THRESHOLD)
        await first.drain()
        second.summarize(session, THRESHOLD + 1)
        await second.drain()
        assert broker.llen(queue) == 1
    finally:
        broker.delete(queue, summary_lock_key(session))
        await first.aclose()
        await second.aclose()


def publish_failures() -> float:
    return REGISTRY.get_sample_value(
        "llmbot_jobs_total", {"job": "summary", "outcome": "publish_failed"}
    ) or 0.0


async def test_with_the_broker_down_each_failed_publish_is_counted_and_asked_again(
    settings: Settings,
) -> None:
    worker = settings.worker.model_copy(update={"celery_broker_url": "redis://127.0.0.1:1/0"})
    down = settings.model_copy(update={"worker": worker})
    jobs = CeleryJobs(down)
    session = uuid.uuid4()
    before = publish_failures()
    try:
        jobs.summarize(session, THRESHOLD)
        await jobs.drain()
        assert publish_failures() == before + 1
        # Nothing remembers a job that never reached the broker: the next message tries again.
        jobs.summarize(session, THRESHOLD + 1)
        await jobs.drain()
        assert publish_failures() == before + 2
        health = await jobs.broker_health()
        assert health.status == "error" and health.detail
    finally:
        await jobs.aclose()
