"""`llm-bot-core run` (what `make run` starts): the backend and, with BOT_TOKEN, the bot."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLMServer
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from tests.bot_support import (  # noqa: F401 - fixtures
    free_port,
    telegram_fixture,
    telegram_server_fixture,
)


async def test_run_serves_the_backend_and_the_bot_answers_through_it(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, settings: Settings,
    llm_server: FakeLLMServer, tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": str(settings.storage.database_url),
        "LLM_BASE_URL": llm_server.base_url,
        "OPENROUTER_MODEL": "test-model",
        "RAG_ENABLED": "false",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "BOT_TOKEN": telegram.token,
        "TELEGRAM_API_URL": telegram_server.base_url,
        "BACKEND_URL": "http://wrong-host:1",  # `run` points the bot at its own backend
        "POLLING_TIMEOUT": "1",
    }
    log = tmp_path / "run.log"
    process = start_run(env, tmp_path, log)
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.2)
        children = psutil.Process(process.pid).children()
        assert len(children) == 1, log.read_text()[-3000:]

        telegram.send_text("through make run", chat_id=930)
        try:
            sent = await telegram.wait_for("sendMessage", chat_id=930, within=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        assert sent[0].plain_text == "Echo: through make run"
    finally:
        stop(process)
    # The bot stops with the backend instead of being left behind.
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, log.read_text()[-3000:]


def start_run(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:  # a file, not a pipe nobody reads that could fill up
        return subprocess.Popen([sys.executable, "-m", "llm_bot_core.cli", "run"], env=env,
                                cwd=cwd, stdout=output, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("`run` did not stop on SIGTERM")
