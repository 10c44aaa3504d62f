"""The bot's test rig: the real aiogram polling a fake Telegram, the real backend under uvicorn.

The tests/test_bot_*.py modules import the fixtures they use (`*_fixture`, registered under
the name without the suffix).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.api_client import BackendClient
from llm_bot_core.bot.app import create_bot, create_dispatcher, start_webhook
from llm_bot_core.bot.config import BotSettings
from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackendServer:
    """The real backend app under uvicorn on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        from llm_bot_core.api.app import create_app

        self.port = port or free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_config=None, access_log=False, loop="asyncio",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackendServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("backend did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> BackendServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture(scope="session", name="telegram_server")
def telegram_server_fixture() -> Iterator[FakeTelegramServer]:
    with FakeTelegramServer() as server:
        yield server


@pytest.fixture(name="telegram")
def telegram_fixture(telegram_server: FakeTelegramServer) -> Iterator[FakeTelegram]:
    telegram_server.fake.reset()
    yield telegram_server.fake
    telegram_server.fake.reset()


@pytest.fixture(name="backend")
def backend_fixture(settings: Settings) -> Iterator[BackendServer]:
    """The real backend on a free port, with the test database and the fake LLM."""
    with BackendServer(settings) as server:
        yield server


def make_bot_settings(telegram_server: FakeTelegramServer, backend_url: str,
                      **overrides: Any) -> BotSettings:
    values: dict[str, Any] = {
        "bot_token": telegram_server.fake.token,
        "telegram_api_url": telegram_server.base_url,
        "backend_url": backend_url,
        "backend_timeout": 10.0,
        "backend_retries": 2,
        "backend_retry_backoff": 0.05,
        "typing_interval": 0.2,
        "polling_timeout": 1,
        "telegram_max_retry_after": 5,
    }
    values.update(overrides)
    return BotSettings(_env_file=None, **values)


class running_bot:
    """The real Dispatcher polling the fake Telegram, as the entry point builds it."""

    def __init__(self, settings: BotSettings) -> None:
        self.settings = settings
        self.backend = BackendClient(settings)
        self.bot = create_bot(settings)
        self.dispatcher = create_dispatcher(settings, self.backend)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> running_bot:
        await self.bot.delete_webhook()
        self._task = asyncio.create_task(self.dispatcher.start_polling(
            self.bot, polling_timeout=self.settings.polling_timeout, handle_signals=False))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        with contextlib.suppress(RuntimeError):  # polling already stopped
            await self.dispatcher.stop_polling()
        await asyncio.wait_for(self._task, 15)
        await self.backend.aclose()


class webhook_bot:
    """The bot in webhook mode: its aiohttp server, registered with the fake Telegram."""

    def __init__(self, settings: BotSettings) -> None:
        self.settings = settings
        self.backend = BackendClient(settings)
        self.bot = create_bot(settings)
        self.dispatcher = create_dispatcher(settings, self.backend)

    async def __aenter__(self) -> webhook_bot:
        self._runner = await start_webhook(self.settings, self.bot, self.dispatcher)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
        await self.backend.aclose()


async def rows(db: AsyncEngine, sql: str, **params: object) -> list[tuple[Any, ...]]:
    async with db.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


async def settle(seconds: float = 0.3) -> None:
    """Give the bot time to (not) react; used only to assert that nothing happens."""
    await asyncio.sleep(seconds)
