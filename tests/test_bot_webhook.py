"""Webhook mode: the bot registers WEBHOOK_URL with a secret and answers updates POSTed to it."""

from __future__ import annotations

import aiohttp
import pytest

from llm_bot_core.testing.fake_llm import FakeLLM
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from tests.bot_support import (  # noqa: F401 - fixtures
    BackendServer,
    backend_fixture,
    free_port,
    make_bot_settings,
    telegram_fixture,
    telegram_server_fixture,
    webhook_bot,
)

pytestmark = pytest.mark.asyncio


async def test_webhook_mode_registers_itself_and_answers_updates(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/tg/hook"
    settings = make_bot_settings(telegram_server, backend.url, webhook_url=url,
                                 webhook_host="127.0.0.1", webhook_port=port,
                                 webhook_secret="hook-secret")
    async with webhook_bot(settings):
        registered = telegram.calls_to("setWebhook")
        assert registered[0].params["url"] == url
        assert registered[0].params["secret_token"] == "hook-secret"
        # Messages, and the presses of inline buttons (/forget, /forget_all).
        assert registered[0].params["allowed_updates"] == ["callback_query", "message"]

        telegram.send_text("via webhook", chat_id=920)  # the fake POSTs it to the webhook
        sent = await telegram.wait_for("sendMessage", chat_id=920)
        assert sent[0].plain_text == "Echo: via webhook"

        async with aiohttp.ClientSession() as session:
            forged = telegram.message("forged", chat_id=921)
            async with session.post(url, json={"update_id": 999, "message": forged},
                                    headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}) as resp:
                assert resp.status == 401
    assert telegram.calls_to("sendMessage", chat_id=921) == []
