"""Real services for the tests: PostgreSQL (embedded or TEST_DATABASE_URL), Redis, a fake LLM.

Tests that need a service skip with the reason when it is absent, and fail instead when CI is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from llm_bot_core.config import Settings
from llm_bot_core.db.engine import normalize_url
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer

TABLES = (
    "embeddings",
    "conversation_summaries",
    "messages",
    "chat_sessions",
    "lexical_stats",
    "llm_usage",
    "bot_users",
    "facts",
    "fact_extraction",
    "chat_settings",
    "personas",
    "job_failures",
    "usage_daily",
)


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a CI run that skipped its real-service tests proves nothing."""
    if os.environ.get("CI"):
        pytest.fail(f"required service unavailable in CI: {reason}")
    pytest.skip(reason)


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        admin_url = normalize_url(configured)
        name = f"llmbot_test_{uuid.uuid4().hex[:8]}"
        try:
            asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # connection refused, auth, ...
            unavailable(f"TEST_DATABASE_URL not reachable: {exc!r}")
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        upgrade_to_head(url)
        yield url
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return

    from llm_bot_core.db.embedded import start_embedded_postgres, stop_embedded_postgres

    # pgserver runs PostgreSQL as its own user when we are root: the directory must be traversable.
    data_dir = Path(tempfile.mkdtemp(prefix="llmbot-pg-"))
    data_dir.chmod(0o755)
    try:
        url = start_embedded_postgres(data_dir)
    except Exception as exc:
        unavailable(f"embedded PostgreSQL did not start: {exc!r}")
    upgrade_to_head(url)
    yield url
    stop_embedded_postgres(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def clean_db(database_url: str) -> AsyncIterator[str]:
    """Empty tables before each test that uses the database."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    await engine.dispose()
    yield database_url


@pytest.fixture
async def db(clean_db: str) -> AsyncIterator[AsyncEngine]:
    """An engine for assertions on rows."""
    engine = create_async_engine(clean_db, poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def fake_llm(llm_server: FakeLLMServer) -> Iterator[FakeLLM]:
    llm_server.fake.reset()
    yield llm_server.fake
    llm_server.fake.reset()


@pytest.fixture(autouse=True)
def strict_chat_prompts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test if any prompt it sent to the fake LLM breaks the strict chat invariant.

    The fake answers such a prompt 400 as a strict chat template server does; tests marked
    `raw_prompts` send bad prompts on purpose and check that themselves.
    """
    if "llm_server" not in request.fixturenames:
        yield
        return
    # Requested here, fake_llm is torn down (and its log cleared) after this check.
    fake: FakeLLM = request.getfixturevalue("fake_llm")
    raw = request.node.get_closest_marker("raw_prompts") is not None
    fake.strict = not raw
    yield
    if fake.prompt_violations and not raw:
        report = "\n".join(
            f"- {problems}: {[m.get('role') for m in messages]}"
            for messages, problems in fake.prompt_violations
        )
        pytest.fail(f"prompts that strict chat templates reject were sent:\n{report}")


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis not reachable at {url}: {exc!r}")
    return url


def make_settings(database_url: str, llm_base_url: str | None, **overrides: object) -> Settings:
    values: dict[str, Any] = {  # Any: each setting has its own type, pydantic checks them
        "database_url": database_url,
        "llm_base_url": llm_base_url,
        "llm_max_retries": 0,
        "llm_timeout": 5.0,
        "openrouter_model": "test-model",
        "migrate_on_start": False,
        "rag_enabled": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM) -> Settings:
    return make_settings(clean_db, llm_server.base_url)


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as client:
        yield client


class running_app:
    """The real app with its lifespan, behind an in-process httpx client."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        from llm_bot_core.api.app import create_app

        self.app = create_app(settings, **app_options)
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://backend"
        )
        self.client.app = self.app  # type: ignore[attr-defined]
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)


async def drain_jobs(client: httpx.AsyncClient) -> None:
    """Wait for background jobs (in-process summaries, indexing) the app started."""
    await client.app.state.services.jobs.drain()  # type: ignore[attr-defined]
