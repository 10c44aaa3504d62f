"""Allowlists and the per-user rate limit: one polite refusal, then silence; no backend call."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiogram.types import Chat, Message, User
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.handlers.chat import speaker
from llm_bot_core.bot.handlers.memory import EraseAll
from llm_bot_core.bot.middlewares import SlidingWindowLimiter
from llm_bot_core.testing.fake_llm import FakeLLM
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


async def test_user_not_on_the_allowlist_gets_one_refusal_and_no_backend_call(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    settings = make_bot_settings(telegram_server, backend.url, allowed_user_ids="42, 43",
                                 allowed_chat_ids="-100777")
    async with running_bot(settings):
        for text in ("hello?", "hello??", "/start"):
            update_id = telegram.push_update({"message": telegram.message(
                text, chat_id=900, user_id=900, language_code="ru")})
        await telegram.wait_consumed(update_id)
        await settle()
        refusals = telegram.sent_texts(chat_id=900)
        assert refusals == ["Извините, этот бот доступен только определённым пользователям."]

        telegram.send_text("I am allowed", chat_id=42, user_id=42)
        assert (await telegram.wait_for("sendMessage", chat_id=42))[0].plain_text == \
            "Echo: I am allowed"
        # Anyone in an allowed group may talk to the bot there.
        telegram.send_text("@test_llm_bot hi from the group", chat_id=-100777, user_id=901,
                           chat_type="supergroup",
                           entities=[{"type": "mention", "offset": 0, "length": 13}])
        await telegram.wait_for("sendMessage", chat_id=-100777)

    assert await rows(db, "SELECT chat_id FROM chat_sessions ORDER BY chat_id") == [
        ("-100777",), ("42",)]


async def test_rate_limit_refuses_once_per_window_and_skips_the_backend(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    settings = make_bot_settings(telegram_server, backend.url, rate_limit_messages=2,
                                 rate_limit_window=60)
    async with running_bot(settings):
        for i in range(2):
            telegram.send_text(f"message {i}", chat_id=910, user_id=910)
            await telegram.wait_for("sendMessage", i + 1, chat_id=910)
        for i in range(2, 5):
            update_id = telegram.push_update({"message": telegram.message(
                f"message {i}", chat_id=910, user_id=910)})
        await telegram.wait_consumed(update_id)
        await settle()

    texts = telegram.sent_texts(chat_id=910)
    assert texts[:2] == ["Echo: message 0", "Echo: message 1"]
    assert len(texts) == 3 and texts[2].startswith("Too many messages in a row")
    assert len(fake_llm.chat_requests) == 2


async def test_refusal_and_rate_limit_notices_come_in_each_users_language(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    settings = make_bot_settings(telegram_server, backend.url, allowed_user_ids="920, 921",
                                 rate_limit_messages=1, rate_limit_window=60)
    async with running_bot(settings):
        telegram.send_text("/start", chat_id=930, user_id=930, language_code="ru")
        telegram.send_text("/start", chat_id=931, user_id=931, language_code="en-US")
        # In a group the refusal quotes the message it answers, as every bot text there does.
        group_message = telegram.send_text(
            "@test_llm_bot hallo", chat_id=-100930, user_id=932, language_code="de",
            chat_type="supergroup", entities=[{"type": "mention", "offset": 0, "length": 13}])
        for user_id, language in ((920, "ru"), (921, "en")):
            telegram.send_text("first", chat_id=user_id, user_id=user_id, language_code=language)
            await telegram.wait_for("sendMessage", chat_id=user_id)
            telegram.send_text("/help", chat_id=user_id, user_id=user_id, language_code=language)
        refused = {chat: (await telegram.wait_for("sendMessage", chat_id=chat))[0]
                   for chat in (930, 931, -100930)}
        limited = {chat: (await telegram.wait_for("sendMessage", 2, chat_id=chat))[1]
                   for chat in (920, 921)}

    assert refused[930].plain_text == \
        "Извините, этот бот доступен только определённым пользователям."
    assert refused[931].plain_text == "Sorry, this bot is only available to certain users."
    assert refused[-100930].plain_text == refused[931].plain_text
    assert refused[-100930].params["reply_parameters"]["message_id"] == \
        group_message["message_id"]
    assert (limited[920].plain_text or "").startswith(
        "Слишком много сообщений подряд. Подождите немного (")
    assert (limited[921].plain_text or "").startswith(
        "Too many messages in a row. Please wait a little (")
    assert len(fake_llm.chat_requests) == 2


def test_sliding_window_frees_a_slot_when_the_oldest_event_leaves_it() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(limit=2, window=10, clock=lambda: now[0])
    assert limiter.hit(1) == 0 and limiter.hit(1) == 0
    assert limiter.hit(1) == pytest.approx(10)
    assert limiter.hit(2) == 0  # per user
    now[0] = 4.0
    assert limiter.hit(1) == pytest.approx(6)
    now[0] = 10.0
    assert limiter.hit(1) == 0


async def test_a_button_from_a_user_no_longer_allowed_is_refused_and_erases_nothing(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    chat = 940
    async with running_bot(make_bot_settings(telegram_server, backend.url,
                                             allowed_user_ids=str(chat))):
        telegram.send_text("/remember I keep bees", chat_id=chat, user_id=chat)
        await telegram.wait_for("sendMessage", chat_id=chat)
        telegram.send_text("/forget_all", chat_id=chat, user_id=chat)
        ask = (await telegram.wait_for("sendMessage", 2, chat_id=chat))[1]
    # The operator takes the user off the allowlist; the confirmation button is still there.
    async with running_bot(make_bot_settings(telegram_server, backend.url,
                                             allowed_user_ids="42")):
        telegram.press(ask, EraseAll(confirm=True).pack())
        answer = (await telegram.wait_for("answerCallbackQuery"))[0]
        await settle()

    assert answer.params["text"] == "Sorry, this bot is only available to certain users."
    assert answer.params["show_alert"] in (True, "true")  # form-encoded by aiogram
    assert telegram.calls_to("editMessageText", chat_id=chat) == []
    assert await rows(db, "SELECT content FROM facts WHERE user_id = :u", u=str(chat)) == [
        ("I keep bees",)]


async def test_button_presses_count_against_the_rate_limit(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    chat = 941
    settings = make_bot_settings(telegram_server, backend.url, rate_limit_messages=2,
                                 rate_limit_window=60)
    async with running_bot(settings):
        telegram.send_text("/remember I keep bees", chat_id=chat, user_id=chat)
        await telegram.wait_for("sendMessage", chat_id=chat)
        telegram.send_text("/forget_all", chat_id=chat, user_id=chat)
        ask = (await telegram.wait_for("sendMessage", 2, chat_id=chat))[1]
        telegram.press(ask, EraseAll(confirm=True).pack())
        answer = (await telegram.wait_for("answerCallbackQuery"))[0]
        await settle()

    assert answer.params["text"].startswith("Too many messages in a row")
    assert telegram.calls_to("editMessageText", chat_id=chat) == []
    assert await rows(db, "SELECT count(*) FROM facts WHERE user_id = :u", u=str(chat)) == [(1,)]


def test_the_author_is_the_user_or_for_a_channel_post_or_anonymous_admin_the_chat() -> None:
    group = Chat(id=-100777, type="supergroup", title="Beekeepers")
    anna = User(id=42, is_bot=False, first_name="Anna", last_name="K")
    when = datetime(2026, 12, 1, tzinfo=UTC)
    by_user = Message(message_id=1, date=when, chat=group, text="hi", from_user=anna)
    anonymous = Message(message_id=2, date=when, chat=group, text="hi", sender_chat=group)
    assert speaker(by_user) == (42, "Anna K")
    assert speaker(anonymous) == (-100777, "Beekeepers")
