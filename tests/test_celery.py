"""Summaries in a real Celery worker over Redis, including a worker killed mid-summary."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.test_summary import assert_chunks_cover_each_message_once

pytestmark = [pytest.mark.asyncio, pytest.mark.celery]

THRESHOLD = 6
REDELIVERY_SECONDS = 10


class Worker:
    """`llm-bot-core worker` as a subprocess, configured like the app under test."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="celery-worker-", suffix=".log", delete=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_bot_core.cli", "worker", "--pool", "solo"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # no stray .env
        )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def kill_once_asked(
        self, requests: Callable[[], list[Any]], what: str, timeout: float = 20
    ) -> None:
        """SIGKILL the worker as soon as the fake model got its request (`what` it asks for)."""
        deadline = time.monotonic() + timeout
        while not requests() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert requests(), f"the worker never asked for {what}"
        self.kill()


def worker_env(
    database_url: str, redis_url: str, llm_base_url: str, queue: str, **settings: object
) -> dict[str, str]:
    """A worker's environment, configured like the app under test; `settings` by variable name
    in lower case (`facts_every=2` is FACTS_EVERY=2)."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_QUEUE": queue,
        "LLM_BASE_URL": llm_base_url,
        "OPENROUTER_MODEL": "test-model",
        "SUMMARY_LOCK_SECONDS": str(REDELIVERY_SECONDS),
        "LLM_MAX_RETRIES": "0",
        "RAG_ENABLED": "false",
        **{name.upper(): str(value) for name, value in settings.items()},
    }


def worker_fixture(**settings: object) -> Callable[..., Iterator[Worker]]:
    """A `worker` fixture: the worker of this test's database and queue, with `settings` (as
    worker_env takes them), stopped after the test."""

    @pytest.fixture(name="worker")
    def worker(
        clean_db: str, redis_url: str, llm_server: FakeLLMServer, queue: str
    ) -> Iterator[Worker]:
        with Worker(worker_env(clean_db, redis_url, llm_server.base_url, queue, **settings)) as w:
            yield w

    return worker


def celery_app_settings(
    database_url: str, llm_base_url: str, redis_url: str, queue: str, **overrides: object
) -> Settings:
    """The app's settings when background jobs go to the worker on `queue`."""
    return make_settings(
        database_url,
        llm_base_url,
        use_celery_for_summary=True,
        celery_broker_url=redis_url,
        celery_queue=queue,
        summary_lock_seconds=REDELIVERY_SECONDS,
        **overrides,
    )


@pytest.fixture(scope="module")
def queue() -> str:
    return f"llmbot-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker(
    clean_db: str, redis_url: str, llm_server: FakeLLMServer, queue: str
) -> Iterator[Worker]:
    env = worker_env(
        clean_db, redis_url, llm_server.base_url, queue,
        summary_threshold=THRESHOLD, log_level="INFO",
    )  # fmt: skip
    with Worker(env) as w:
        yield w
    if os.environ.get("CELERY_TEST_SHOW_LOG"):
        print(open(w.log.name).read())


@pytest.fixture
def celery_settings(
    clean_db: str, redis_url: str, llm_server: FakeLLMServer, queue: str, fake_llm: FakeLLM
) -> Settings:
    return celery_app_settings(
        clean_db, llm_server.base_url, redis_url, queue, summary_threshold=THRESHOLD
    )


async def wait_for(db: AsyncEngine, sql: str, expected: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        async with db.connect() as conn:
            value = (await conn.execute(text(sql))).scalar()
        if value == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql!r} gave {value!r}, expected {expected!r}")


async def say(client: httpx.AsyncClient, words: str) -> None:
    response = await client.post(
        "/v1/chat/handle",
        json={"user_id": "u", "chat_id": "c", "chat_type": "private", "text": words},
    )
    assert response.status_code == 200, response.text


async def test_worker_writes_versions_after_each_threshold(
    celery_settings: Settings, worker: Worker, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    async with running_app(celery_settings) as client:
        health = (await client.get("/health")).json()
        assert health["broker"]["status"] == "ok"
        for version in (1, 2, 3):
            for turn in range(THRESHOLD // 2):
                await say(client, f"v{version} t{turn}")
            await wait_for(db, "SELECT max(version) FROM conversation_summaries", version)
    async with db.connect() as conn:
        watermarks = (
            (
                await conn.execute(
                    text("SELECT last_message_id FROM conversation_summaries ORDER BY version")
                )
            )
            .scalars()
            .all()
        )
    assert watermarks == [6, 12, 18]
    await assert_chunks_cover_each_message_once(db, fake_llm)


async def test_a_counter_set_by_hand_neither_stops_nor_delays_the_summary(
    celery_settings: Settings, worker: Worker, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    async with running_app(celery_settings) as client:
        await say(client, "before the edit")  # messages 1, 2
        async with db.begin() as conn:
            await conn.execute(text("UPDATE chat_sessions SET messages_since_summary = 1000"))
        # 1001 queues a job; it finds 3 or 4 messages due, none written, and puts the
        # counter back to the truth.
        await say(client, "after the edit")
        await wait_for(db, "SELECT messages_since_summary FROM chat_sessions", 4)
        assert fake_llm.summary_requests == []
        await say(client, "the sixth message is the reply to this one")
        # Due at the sixth message, as if the counter had never been touched.
        await wait_for(db, "SELECT max(last_message_id) FROM conversation_summaries", 6)
    await wait_for(db, "SELECT messages_since_summary FROM chat_sessions", 0)
    await assert_chunks_cover_each_message_once(db, fake_llm)


async def test_worker_killed_mid_summary_the_job_is_redone_once(
    celery_settings: Settings, worker: Worker, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    fake_llm.summary_latency = 3.0
    async with running_app(celery_settings) as client:
        for turn in range(THRESHOLD // 2):
            await say(client, f"t{turn}")
        await worker.kill_once_asked(lambda: fake_llm.summary_requests, "a summary")
        fake_llm.summary_latency = None
        worker.start()  # the unacknowledged task comes back after the visibility timeout
        await wait_for(
            db, "SELECT count(*) FROM conversation_summaries", 1, timeout=REDELIVERY_SECONDS + 30
        )
        await asyncio.sleep(1)
    await wait_for(db, "SELECT count(*) FROM conversation_summaries", 1)
    await wait_for(db, "SELECT messages_since_summary FROM chat_sessions", 0)
    # The killed attempt and the redone one asked about the same chunk; one version was written.
    assert len(fake_llm.summary_requests) == 2
    first, second = (r["messages"] for r in fake_llm.summary_requests)
    assert first == second
    async with db.connect() as conn:
        rows = (
            await conn.execute(text("SELECT version, last_message_id FROM conversation_summaries"))
        ).all()
    assert [tuple(r) for r in rows] == [(1, 6)]


async def test_broker_down_replies_keep_flowing(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(
        clean_db,
        llm_server.base_url,
        use_celery_for_summary=True,
        celery_broker_url="redis://127.0.0.1:1/0",
        summary_threshold=2,
    )
    async with running_app(settings) as client:
        for turn in range(3):
            await say(client, f"t{turn}")
        health = (await client.get("/health")).json()
        await client.app.state.services.jobs.drain()  # type: ignore[attr-defined]
    assert health["status"] == "ok" and health["broker"]["status"] == "error"
    async with db.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM messages"))).scalar()
        counter = (
            await conn.execute(text("SELECT messages_since_summary FROM chat_sessions"))
        ).scalar()
    # Every reply was stored; the summary is still due and will be queued by the next message.
    assert count == 6 and counter == 6


async def test_summary_due_while_the_broker_was_down_is_queued_once_it_is_back(
    clean_db: str,
    db: AsyncEngine,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    celery_settings: Settings,
    worker: Worker,
) -> None:
    broker_down = make_settings(
        clean_db,
        llm_server.base_url,
        use_celery_for_summary=True,
        celery_broker_url="redis://127.0.0.1:1/0",
        summary_threshold=THRESHOLD,
    )
    async with running_app(broker_down) as client:
        for turn in range(THRESHOLD // 2 + 1):
            await say(client, f"while down {turn}")
        await client.app.state.services.jobs.drain()  # type: ignore[attr-defined]
    await wait_for(db, "SELECT count(*) FROM conversation_summaries", 0)
    await wait_for(db, "SELECT messages_since_summary FROM chat_sessions", THRESHOLD + 2)

    # The broker is back: the next message finds the counter past the threshold and queues it.
    async with running_app(celery_settings) as client:
        await say(client, "back")
        await wait_for(db, "SELECT count(*) FROM conversation_summaries", 1)
    async with db.connect() as conn:
        watermark = (
            await conn.execute(text("SELECT last_message_id FROM conversation_summaries"))
        ).scalar()
    assert watermark is not None and watermark >= THRESHOLD + 3  # everything said while down
    await assert_chunks_cover_each_message_once(db, fake_llm)


async def test_a_task_that_fails_for_good_is_recorded_in_job_failures(
    worker: Worker, celery_settings: Settings, db: AsyncEngine
) -> None:
    from llm_bot_core.worker.app import SUMMARIZE_TASK

    async with running_app(celery_settings) as client:
        jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
        # Not a session id: the task raises ValueError, which it does not retry.
        await jobs.publish(SUMMARIZE_TASK, ["not-a-session-id"])
        await wait_for(db, "SELECT count(*) FROM job_failures", 1)
    async with db.connect() as conn:
        task, arguments, error, attempts = (await conn.execute(text(
            "SELECT task, arguments, error, attempts FROM job_failures"))).one()
    assert task == SUMMARIZE_TASK
    assert "not-a-session-id" in arguments
    assert error.startswith("ValueError")
    assert attempts == 1
