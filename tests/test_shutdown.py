"""Stopping the backend as an operator does: quick, nothing lost, nothing left running."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.test_cli import free_port, wait_healthy

GRACE = 3
CHATS = 40
MESSAGES_PER_CHAT = 8


class Backend:
    """`llm-bot-core run` on embedded PostgreSQL under one DATA_DIR, RAG on the local model."""

    def __init__(self, data_dir: Path, llm_base_url: str, command: str = "run",
                 **env_overrides: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        unset = ("DATABASE_URL", "OPENROUTER_API_KEY")
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env.update(
            DATA_DIR=str(data_dir), PORT=str(self.port), LLM_BASE_URL=llm_base_url,
            RAG_ENABLED="true", RAG_EMBEDDER="local", SUMMARY_THRESHOLD="4",
            SHUTDOWN_GRACE_SECONDS=str(GRACE), LLM_MAX_RETRIES="0", **env_overrides,
        )
        self.log = (data_dir / f"backend-{self.port}.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "llm_bot_core.cli", command], env=env,
                                     cwd=data_dir, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"{self.url}/health", self.proc, timeout=120)
        except BaseException:
            # A backend that never became healthy must not outlive the test.
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        return (self.data_dir / f"backend-{self.port}.log").read_text(errors="replace")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="llmbot-stop-"))
    path.chmod(0o755)
    yield path
    for proc in postmasters(path):  # a failed test must not leave a server behind
        proc.kill()
    shutil.rmtree(path, ignore_errors=True)


class SilentBroker:
    """A broker that accepts connections and never answers (failover, a dropped NAT entry)."""

    def __init__(self) -> None:
        import socket

        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}/0"
        self._held: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self._held.append(self._server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self._server.close()


def postmasters(data_dir: Path) -> list[psutil.Process]:
    """The postgres servers (postmasters, not their children) running on this data dir."""
    pgdata = str((data_dir / "postgres").resolve())
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "ppid"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and pgdata in cmdline:
            try:
                parent = psutil.Process(proc.info["ppid"])
            except psutil.NoSuchProcess:
                found.append(proc)
                continue
            if parent.name() != "postgres":
                found.append(proc)
    return found


def embedded_url(data_dir: Path) -> str:
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    return f"postgresql+asyncpg://postgres:@/postgres?host={lines[4].strip()}"


async def counts(data_dir: Path) -> dict[str, int]:
    engine = create_async_engine(embedded_url(data_dir), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT (SELECT count(*) FROM messages WHERE role IN ('user', 'assistant')),"
                "       (SELECT count(*) FROM rag_outbox),"
                "       (SELECT count(*) FROM embeddings),"
                "       (SELECT count(*) FROM rag_outbox WHERE next_attempt_at > now())"
            ))).one()
    finally:
        await engine.dispose()
    return {"messages": row[0], "outbox": row[1], "embeddings": row[2], "leased": row[3]}


async def chat_calls_accounted(data_dir: Path) -> int:
    engine = create_async_engine(embedded_url(data_dir), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(
                "SELECT count(*) FROM llm_usage WHERE purpose = 'chat'"))).scalar_one())
    finally:
        await engine.dispose()


async def flood(url: str) -> None:
    async def chat(c: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for i in range(MESSAGES_PER_CHAT):
                body = {"user_id": f"u{c}", "chat_id": f"c{c}", "text": f"fact {i} of chat {c}"}
                response = await client.post("/v1/chat/handle", json=body)
                assert response.status_code == 200, response.text

    await asyncio.gather(*(chat(c) for c in range(CHATS)))


def stop(backend: Backend) -> float:
    started = time.monotonic()
    backend.proc.send_signal(signal.SIGTERM)
    try:
        backend.proc.wait(GRACE + 30)
    finally:
        backend.log.close()
    return time.monotonic() - started


async def test_sigterm_after_a_flood_exits_within_the_grace_and_the_outbox_redoes_the_rest(
    data_dir: Path, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    # A summary that would talk to the LLM for 40 s must not hold the exit past the grace.
    fake_llm.summary_latency = 40
    # Usage records wait in memory for a minute: only the shutdown can have written them.
    first = Backend(data_dir, llm_server.base_url, USAGE_FLUSH_INTERVAL_MS="60000")
    await flood(first.url)
    at_sigterm = await counts(data_dir)
    took = stop(first)
    output = first.output()
    assert took < GRACE + 5, output[-3000:]
    assert re.search(r"shutdown: cancelled \d+ background job", output)  # the stuck summaries
    assert first.proc.returncode in (0, 143), output[-3000:]
    assert postmasters(data_dir) == []  # the embedded server stopped with its only user

    # Every message was stored; indexing left undone is picked up at once by the next start
    # (the cancelled jobs handed their outbox rows back instead of leaving them leased).
    fake_llm.summary_latency = None
    second = Backend(data_dir, llm_server.base_url)
    try:
        after = await counts(data_dir)
        assert after["messages"] == 2 * CHATS * MESSAGES_PER_CHAT
        assert await chat_calls_accounted(data_dir) == CHATS * MESSAGES_PER_CHAT
        # Indexing runs at the lowest CPU priority: on a busy machine it is slow, not stuck, so
        # the test fails only when the outbox stops shrinking for a minute.
        left, stalled_since = after["outbox"], time.monotonic()
        while (now := await counts(data_dir))["outbox"] > 0:
            if now["outbox"] < left:
                left, stalled_since = now["outbox"], time.monotonic()
            assert time.monotonic() - stalled_since < 60, (at_sigterm, now)
            await asyncio.sleep(0.5)
        assert now["embeddings"] == now["messages"]
    finally:
        stop(second)
    print(f"\nat SIGTERM: {at_sigterm}; exit took {took:.1f} s")


async def test_a_killed_backends_postgres_is_reused_and_stopped_by_the_next_start(
    data_dir: Path, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    first = Backend(data_dir, llm_server.base_url)
    [orphan] = postmasters(data_dir)
    first.proc.kill()  # kill -9: no atexit hook stops the embedded server
    first.proc.wait(10)
    first.log.close()
    assert postmasters(data_dir) == [orphan]

    second = Backend(data_dir, llm_server.base_url)
    try:
        assert postmasters(data_dir) == [orphan]  # reused, not a second server beside it
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
            response = await client.post(
                "/v1/chat/handle", json={"user_id": "1", "chat_id": "2", "text": "still here?"})
        assert response.status_code == 200, response.text
        assert (await counts(data_dir))["messages"] == 2
    finally:
        stop(second)
    # The last user is gone, so the server goes too, although the killed one never said so.
    assert second.proc.returncode in (0, 143)
    assert postmasters(data_dir) == [], second.output()[-3000:]


async def test_sigterm_with_a_request_stuck_on_the_llm_and_a_silent_broker_exits_within_the_grace(
    data_dir: Path, clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    broker = SilentBroker()
    backend = Backend(data_dir, llm_server.base_url, "serve", DATABASE_URL=clean_db,
                      USE_CELERY_FOR_SUMMARY="true", CELERY_BROKER_URL=broker.url)
    try:
        # Each reply queues an indexing job: its publish hangs on the broker that never answers.
        async with httpx.AsyncClient(base_url=backend.url, timeout=30) as client:
            for i in range(4):
                body = {"user_id": "u", "chat_id": "c", "text": f"message {i}"}
                assert (await client.post("/v1/chat/handle", json=body)).status_code == 200
        # And one request is still waiting for the model when the operator stops the backend.
        # (12 s: past the bound below, yet short enough that the shared fake LLM server's
        # own shutdown at the end of the session does not wait on it for long.)
        fake_llm.latency = 12
        stuck = threading.Thread(target=lambda: httpx.post(
            f"{backend.url}/v1/chat/handle", timeout=60,
            json={"user_id": "u", "chat_id": "c", "text": "are you there?"}), daemon=True)
        stuck.start()
        while len(fake_llm.chat_requests) < 5:
            await asyncio.sleep(0.05)
        took = stop(backend)
    finally:
        broker.close()
    # The grace applies twice at most: to the open request, then to the pending publishes.
    assert took < 2 * GRACE + 5, backend.output()[-3000:]
    assert backend.proc.returncode in (0, 143)
    async with db.connect() as conn:
        stored = (await conn.execute(text(
            "SELECT count(*) FROM messages WHERE role = 'user'"))).scalar()
    assert stored == 5  # the stuck request's message was kept, only its reply was given up
    print(f"\nexit with a request stuck on the LLM and a silent broker took {took:.1f} s")
