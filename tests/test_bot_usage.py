"""Budgets, bans and /usage through the bot: the real aiogram, backend and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.handlers.usage import usage_text
from llm_bot_core.bot.notices import Notices, duration
from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from tests.bot_support import (  # noqa: F401 - fixtures
    BackendServer,
    backend_fixture,
    make_bot_settings,
    rows,
    running_bot,
    settle,
    telegram_fixture,
    telegram_server_fixture,
)
from tests.conftest import make_settings


@pytest.fixture
def settings(clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM) -> Settings:
    return make_settings(clean_db, llm_server.base_url, user_daily_token_limit=100)


async def test_a_blocked_user_is_told_once_then_the_bot_stays_silent(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    async with db.begin() as conn:
        await conn.execute(text("INSERT INTO bot_users (user_id, blocked) VALUES ('950', true)"))
    settings = make_bot_settings(telegram_server, backend.url)
    async with running_bot(settings):
        for message in ("привет", "ау?", "ответь!"):
            update_id = telegram.push_update({"message": telegram.message(
                message, chat_id=950, user_id=950, language_code="ru")})
        await telegram.wait_consumed(update_id)
        await settle()
        telegram.send_text("hello", chat_id=951, user_id=951)
        await telegram.wait_for("sendMessage", chat_id=951)

    assert telegram.sent_texts(chat_id=950) == [
        "Извините, администратор ограничил вам доступ к этому боту."
    ]
    assert len(fake_llm.chat_requests) == 1  # only the other user's
    assert await rows(db, "SELECT count(*) FROM chat_sessions WHERE user_id = '950'") == [(0,)]


async def test_over_budget_the_user_is_told_once_when_to_come_back_and_usage_shows_the_day(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    fake_llm.usage, fake_llm.cost = (80, 30), 0.002  # one answer spends the day's 100 tokens
    settings = make_bot_settings(telegram_server, backend.url)
    async with running_bot(settings):
        telegram.send_text("one", chat_id=960, user_id=960)
        await telegram.wait_for("sendMessage", chat_id=960)
        telegram.send_text("two", chat_id=960, user_id=960)
        await telegram.wait_for("sendMessage", 2, chat_id=960)
        update_id = telegram.push_update({"message": telegram.message(
            "three", chat_id=960, user_id=960)})
        await telegram.wait_consumed(update_id)
        await settle()
        assert len(telegram.sent_texts(chat_id=960)) == 2  # silence after the notice
        telegram.send_text("/usage", chat_id=960, user_id=960)
        await telegram.wait_for("sendMessage", 3, chat_id=960)
        telegram.send_text("/usage", chat_id=961, user_id=961, language_code="ru")
        await telegram.wait_for("sendMessage", chat_id=961)

    answer, notice, usage = telegram.sent_texts(chat_id=960)
    assert answer == "Echo: one"
    assert re.fullmatch(
        r"You have used up today's limit\. You can write to me again in "
        r"(\d+ h )?\d+ min — I'll be glad to continue\.|"
        r"You have used up today's limit\. You can write to me again in \d+ h — "
        r"I'll be glad to continue\.",
        notice,
    ), notice
    assert usage.startswith(
        "Today: 110 tokens (80 in prompts, 30 in answers), 1 model calls.\n"
        "Limit: 100 tokens a day, 0 left.\nCost: $0.0020.\nA new day starts in "
    ), usage
    (russian,) = telegram.sent_texts(chat_id=961)
    assert re.fullmatch(
        r"Сегодня: 0 токенов \(0 в запросах, 0 в ответах\), обращений к модели: 0\.\n"
        r"Лимит: 100 токенов в день, осталось 100\.\n"
        r"Новый день начнётся через (\d+ ч( \d+ мин)?|\d+ мин)\.",
        russian,
    ), russian
    assert len(fake_llm.chat_requests) == 1
    assert await rows(db, "SELECT count(*) FROM messages") == [(2,)]


def test_a_notice_is_given_again_once_the_wait_it_named_is_over() -> None:
    now = [0.0]
    notices = Notices(clock=lambda: now[0])
    assert notices.first(1, "budget_exceeded", 60)
    assert not notices.first(1, "budget_exceeded", 60)
    now[0] = 61
    assert notices.first(1, "budget_exceeded", 60)
    assert notices.first(1, "user_blocked", None)
    now[0] = 10**9
    assert not notices.first(1, "user_blocked", None)
    notices.clear(1)  # answered again: the ban was lifted
    assert notices.first(1, "user_blocked", None)


def test_durations_read_naturally_in_both_languages() -> None:
    assert duration(30, "en") == "1 min"
    assert duration(3600, "en") == "1 h"
    assert duration(3 * 3600 + 19 * 60 + 5, "ru") == "3 ч 20 мин"


def test_usage_shows_voice_seconds_and_pictures_in_the_users_language_when_any() -> None:
    resets_at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    day = {"prompt_tokens": 70, "completion_tokens": 30, "cost": None, "calls": 4,
           "audio_seconds": 7.4, "transcriptions": 2, "pictures_described": 1}  # fmt: skip
    data = {"today": day, "daily_token_limit": 0, "resets_at": resets_at}
    assert usage_text(data, "en").split("\n")[:4] == [
        "Today: 100 tokens (70 in prompts, 30 in answers), 4 model calls.",
        "Voice messages transcribed: 2 (8 s).",
        "Pictures described: 1.",
        "No daily limit.",
    ]
    assert usage_text(data, "ru").split("\n")[1:3] == [
        "Голосовых распознано: 2 (8 с).",
        "Картинок описано: 1.",
    ]
    quiet = {**data, "today": {**day, "audio_seconds": 0.0, "transcriptions": 0,
                               "pictures_described": 0}}  # fmt: skip
    assert usage_text(quiet, "en").split("\n")[1] == "No daily limit."
