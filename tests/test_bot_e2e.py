"""The bot end to end: real aiogram polling a fake Telegram, the real backend, real PostgreSQL."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.formatting import check_html
from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, text_of
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from tests.bot_support import (  # noqa: F401 - fixtures
    BackendServer,
    backend_fixture,
    free_port,
    make_bot_settings,
    rows,
    running_bot,
    settle,
    telegram_fixture,
    telegram_server_fixture,
)
from tests.test_pictures import jpeg

pytestmark = pytest.mark.asyncio


async def test_text_message_gets_typing_then_llm_answer_and_both_messages_are_stored(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("Привет, что ты умеешь?", chat_id=501, user_id=77)
        sent = await telegram.wait_for("sendMessage", chat_id=501)

    assert sent[0].plain_text == "Echo: Привет, что ты умеешь?"
    assert sent[0].params["parse_mode"] == "HTML"
    typing = telegram.calls_to("sendChatAction", chat_id=501)
    assert typing and typing[0].params["action"] == "typing"
    assert typing[0].at < sent[0].at
    assert await rows(db, "SELECT s.user_id, s.chat_id, m.role, m.content FROM messages m "
                          "JOIN chat_sessions s ON s.id = m.session_id ORDER BY m.id") == [
        ("77", "501", "user", "Привет, что ты умеешь?"),
        ("77", "501", "assistant", "Echo: Привет, что ты умеешь?"),
    ]


async def test_typing_indicator_repeats_while_the_backend_works(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    fake_llm.latency = 1.0
    async with running_bot(make_bot_settings(telegram_server, backend.url, typing_interval=0.2)):
        telegram.send_text("slow question", chat_id=502)
        await telegram.wait_for("sendMessage", chat_id=502)
    assert len(telegram.calls_to("sendChatAction", chat_id=502)) >= 3


async def test_start_closes_the_session_and_the_next_message_opens_a_new_one(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("first", chat_id=503)
        await telegram.wait_for("sendMessage", 1, chat_id=503)
        telegram.send_text("/start", chat_id=503, language_code="ru")
        greeting = await telegram.wait_for("sendMessage", 2, chat_id=503)
        assert "Привет" in greeting[1].plain_text  # type: ignore[operator]
        assert await rows(db, "SELECT is_active, closed_at IS NOT NULL FROM chat_sessions") == [
            (False, True)]

        telegram.send_text("second", chat_id=503)
        await telegram.wait_for("sendMessage", 3, chat_id=503)

    sessions = await rows(db, "SELECT is_active FROM chat_sessions ORDER BY created_at")
    assert sessions == [(False,), (True,)]
    # The new session's prompt does not carry the old conversation.
    assert "first" not in str(fake_llm.chat_requests[-1]["messages"])


async def test_long_markdown_answer_arrives_as_several_valid_messages_with_code_intact(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    code = "\n".join(f"    total += values[{i}]  # a < b && c > d" for i in range(40))
    prose = " ".join(f"Sentence {i} has **bold** and `inline <code>` & *italics*."
                     for i in range(60))
    answer = (f"# Report\n\n{prose}\n\n```python\ndef total(values):\n{code}\n```\n\n"
              f"{prose}\n\n- one\n- two\n\n{prose}\n\n[docs](https://example.com/?a=1&b=2)")
    answer = answer + "\n\n" + prose * ((10_000 - len(answer)) // len(prose) + 1)
    answer = answer[:10_000]
    assert len(answer) == 10_000
    fake_llm.reply = lambda messages: answer

    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("write a long report", chat_id=504)
        await telegram.wait_for("sendMessage", 3, chat_id=504)
        await settle(0.5)

    sent = telegram.calls_to("sendMessage", chat_id=504)
    assert not telegram.calls_to("sendMessage", chat_id=504, ok=False)  # Telegram took them all
    for call in sent:
        html = call.params["text"]
        assert len(html) <= 4096
        check_html(html)
        assert call.params["parse_mode"] == "HTML"
    with_code = [c.params["text"] for c in sent if "<pre>" in c.params["text"]]
    assert len(with_code) == 1  # the code block fits one message, so it is not split
    assert "def total(values):" in with_code[0] and "values[39]" in with_code[0]
    assert with_code[0].count("<pre>") == with_code[0].count("</pre>") == 1
    seen = re.sub(r"\s+", "", "".join(c.plain_text or "" for c in sent))
    assert "Sentence59hasboldandinline<code>&italics." in seen
    assert seen.count("values[") == 40


async def test_html_rejected_by_telegram_is_resent_as_plain_text(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    fake_llm.reply = lambda messages: "Answer with **bold** & <angle> text"
    telegram.fail_next("sendMessage", status=400,
                       description="Bad Request: can't parse entities: Unsupported start tag "
                                   '"b" at byte offset 12',
                       when=lambda params: params.get("parse_mode") == "HTML")
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("hi", chat_id=505)
        sent = await telegram.wait_for("sendMessage", chat_id=505)

    assert sent[0].plain_text == "Answer with bold & <angle> text"
    assert "parse_mode" not in sent[0].params
    assert len(telegram.calls_to("sendMessage", chat_id=505, ok=False)) == 1


async def test_flood_control_retry_after_is_waited_out(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    telegram.flood("sendMessage", retry_after=1)
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("hello", chat_id=506)
        sent = await telegram.wait_for("sendMessage", chat_id=506)

    refused = telegram.calls_to("sendMessage", chat_id=506, ok=False)
    assert len(refused) == 1
    assert sent[0].plain_text == "Echo: hello"
    assert sent[0].at - refused[0].at >= 0.95


async def test_backend_down_gives_friendly_message_and_recovers_when_it_is_back(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, settings: Settings,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    port = free_port()
    async with running_bot(make_bot_settings(telegram_server, f"http://127.0.0.1:{port}")):
        telegram.send_text("anyone there?", chat_id=507, language_code="ru")
        sent = await telegram.wait_for("sendMessage", chat_id=507)
        assert sent[0].plain_text == "Сервис временно недоступен. Попробуйте ещё раз через минуту."
        assert "Traceback" not in (sent[0].plain_text or "")

        with BackendServer(settings, port=port):
            telegram.send_text("and now?", chat_id=507)
            sent = await telegram.wait_for("sendMessage", 2, chat_id=507)
    assert sent[1].plain_text == "Echo: and now?"
    assert await rows(db, "SELECT content FROM messages ORDER BY id") == [
        ("and now?",), ("Echo: and now?",)]


async def test_backend_timeout_is_a_friendly_message_and_the_message_is_not_sent_twice(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    fake_llm.latency = 1.5
    async with running_bot(make_bot_settings(telegram_server, backend.url, backend_timeout=0.5)):
        telegram.send_text("slow one", chat_id=510)
        sent = await telegram.wait_for("sendMessage", chat_id=510)
        assert sent[0].plain_text == "The answer is taking too long. Please try again a bit later."
        await settle(1.5)
    assert len(fake_llm.chat_requests) == 1
    assert await rows(db, "SELECT role FROM messages WHERE role = 'user'") == [("user",)]


async def test_llm_failure_is_a_short_message_in_english(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    fake_llm.fail_next(count=5, status=500)
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("hi", chat_id=508, language_code="en-GB")
        sent = await telegram.wait_for("sendMessage", chat_id=508)
    assert sent[0].plain_text == ("The model did not answer this time. Please try again — "
                                  "your message was saved.")
    assert len(fake_llm.chat_requests) == 1  # a 502 from /chat/handle is not repeated


async def test_group_answers_only_when_mentioned_or_replied_to(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    group = -100123
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        update_id = telegram.push_update({"message": telegram.message(
            "people talking among themselves", chat_id=group, user_id=11,
            chat_type="supergroup")})
        await telegram.wait_consumed(update_id)
        await settle()
        assert fake_llm.chat_requests == []
        assert telegram.calls_to("sendMessage", chat_id=group) == []
        assert await rows(db, "SELECT count(*) FROM messages") == [(0,)]

        text = "@test_llm_bot what is 2+2?"
        telegram.push_update({"message": telegram.message(
            text, chat_id=group, user_id=11, chat_type="supergroup",
            entities=[{"type": "mention", "offset": 0, "length": 13}])})
        first = await telegram.wait_for("sendMessage", 1, chat_id=group)
        # The fake model echoes the prompt's last turn, which in a group names its speaker.
        assert first[0].plain_text == "Echo: [Alice] what is 2+2?"
        assert first[0].params["reply_parameters"]["message_id"]

        bot_message = {"message_id": 1, "date": 0, "chat": {"id": group, "type": "supergroup"},
                       "from": telegram.bot_user, "text": "Echo: what is 2+2?"}
        telegram.push_update({"message": telegram.message(
            "and 3+3?", chat_id=group, user_id=12, chat_type="supergroup",
            reply_to_message=bot_message)})
        second = await telegram.wait_for("sendMessage", 2, chat_id=group)
        assert second[1].plain_text == "Echo: [Alice] and 3+3?"

        telegram.send_text("/start@test_llm_bot", chat_id=group, user_id=11,
                           chat_type="supergroup")
        await telegram.wait_for("sendMessage", 3, chat_id=group)

    # One memory for the group, as the backend keys it by chat.
    assert await rows(db, "SELECT chat_id, is_active FROM chat_sessions") == [(str(group), False)]
    assert len(fake_llm.chat_requests) == 2


@pytest.mark.filterwarnings("ignore:Detected unknown update type")
async def test_stickers_photos_edits_and_unknown_updates_do_not_break_the_bot(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    chat = 509
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        sticker = {"file_id": "s1", "file_unique_id": "u1", "type": "regular", "width": 512,
                   "height": 512, "is_animated": False, "is_video": False}
        telegram.push_update({"message": telegram.message(chat_id=chat, sticker=sticker)})
        telegram.push_update({"message": telegram.message(
            chat_id=chat, voice={"file_id": "v1", "file_unique_id": "vu1", "duration": 2})})
        texts = await telegram.wait_for("sendMessage", 2, chat_id=chat)
        # The voice message is the voice handler's (tests/test_bot_voice.py); its file is gone.
        assert sorted("text only" in (c.plain_text or "") for c in texts) == [False, True]
        assert "couldn't read that recording" in str([c.plain_text for c in texts])
        # A photo is a picture for the model now (handlers/photos.py, tests/test_bot_pictures.py).
        telegram.send_photo(jpeg(90, 90), chat_id=chat)
        await telegram.wait_for("sendMessage", 3, chat_id=chat)

        edited = telegram.message("edited text", chat_id=chat, edit_date=1)
        telegram.push_update({"edited_message": edited})
        telegram.push_update({"some_future_update": {"field": 1}})
        telegram.push_update({"callback_query": {"id": "c1", "from": edited["from"],
                                                 "chat_instance": "x", "data": "d"}})
        telegram.send_photo(jpeg(90, 90), "what is on this photo?", chat_id=chat)
        answered = await telegram.wait_for("sendMessage", 4, chat_id=chat)
        assert answered[3].plain_text == "Echo: [Picture]\nwhat is on this photo?"

        for caption in ("compare these two", None):  # an album: the caption on one item
            album_item = telegram.photo_message(jpeg(90, 90), caption, chat_id=chat,
                                                media_group_id="album1")
            update_id = telegram.push_update({"message": album_item})
        await telegram.wait_for("sendMessage", 5, chat_id=chat)
        await telegram.wait_consumed(update_id)
        await settle()

    assert telegram.sent_texts(chat_id=chat)[2:] == [
        "Echo: [Picture]", "Echo: [Picture]\nwhat is on this photo?",
        "Echo: [Picture]\n[Picture]\ncompare these two"]
    assert [text_of(r["messages"][-1]["content"]) for r in fake_llm.chat_requests] == [
        "[Picture]", "[Picture]\nwhat is on this photo?",
        "[Picture]\n[Picture]\ncompare these two"]


async def test_help_lists_the_commands_in_the_users_language(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("/help", chat_id=511, language_code="ru")
        telegram.send_text("/help", chat_id=512, language_code="de")
        russian = (await telegram.wait_for("sendMessage", chat_id=511))[0].plain_text or ""
        english = (await telegram.wait_for("sendMessage", chat_id=512))[0].plain_text or ""
    assert "/start — начать диалог заново" in russian and "@test_llm_bot" in russian
    assert "/start — start over" in english and "/help" in english
    assert fake_llm.chat_requests == []
    # The command menu was registered at startup, in both languages.
    menus = telegram.calls_to("setMyCommands")
    assert {m.params.get("language_code") for m in menus} == {None, "ru"}
