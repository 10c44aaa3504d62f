"""Fact extraction in a real Celery worker, including a worker killed mid-batch."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import running_app
from tests.test_api import rows
from tests.test_celery import (
    REDELIVERY_SECONDS,
    Worker,
    celery_app_settings,
    wait_for,
    worker_fixture,
)
from tests.test_facts_extraction import considered_lines, user_messages

pytestmark = [pytest.mark.asyncio, pytest.mark.celery]

ALICE = "1001"


@pytest.fixture
def queue() -> str:
    return f"llmbot-facts-{uuid.uuid4().hex[:8]}"


worker = worker_fixture(facts_every=2)


async def test_worker_killed_mid_batch_neither_loses_nor_doubles_facts(
    clean_db: str,
    redis_url: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    queue: str,
    worker: Worker,
    db: AsyncEngine,
) -> None:
    settings = celery_app_settings(clean_db, llm_server.base_url, redis_url, queue, facts_every=2)
    fake_llm.facts_latency = 3.0
    async with running_app(settings) as client:
        for words in ("My car is Volvo.", "My dog is Barbossa."):
            response = await client.post(
                "/v1/chat/handle", json={"user_id": ALICE, "chat_id": ALICE, "text": words}
            )
            assert response.status_code == 200, response.text
        await worker.kill_once_asked(lambda: fake_llm.fact_requests, "facts")
        fake_llm.facts_latency = None
        worker.start()  # the unacknowledged task comes back after the visibility timeout
        await wait_for(db, "SELECT count(*) FROM facts", 2, timeout=REDELIVERY_SECONDS + 30)
        await asyncio.sleep(1)
    await wait_for(db, "SELECT count(*) FROM facts", 2)
    facts = await rows(db, "SELECT content FROM facts ORDER BY id")
    assert facts == [("Car is Volvo",), ("Dog is Barbossa",)]
    said = await user_messages(db)
    assert await rows(db, "SELECT last_message_id, calls FROM fact_extraction") == [
        (said[-1][0], 1)
    ]
    # The killed attempt and the redone one asked about the same batch; it was applied once.
    assert considered_lines(fake_llm) == [c for _, c in said] * 2
