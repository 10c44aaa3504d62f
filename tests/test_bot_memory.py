"""The user's memory commands end to end: real aiogram polling a fake Telegram, the real backend
(facts API, erasure), real PostgreSQL; buttons pressed as Telegram sends them (callback_query)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.handlers.memory import EraseAll, ForgetFact
from llm_bot_core.testing.fake_llm import FakeLLM
from llm_bot_core.testing.fake_telegram import ApiCall, FakeTelegram, FakeTelegramServer
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

pytestmark = pytest.mark.asyncio


async def _say(telegram: FakeTelegram, text: str, chat: int, count: int, **kw: object) -> ApiCall:
    """Send `text` in a private chat; the `count`-th sendMessage of that chat (the answer)."""
    telegram.send_text(text, chat_id=chat, user_id=chat, **kw)
    return (await telegram.wait_for("sendMessage", count, chat_id=chat))[count - 1]


async def _facts(db: AsyncEngine, user: int) -> list[str]:
    found = await rows(db, "SELECT content FROM facts WHERE user_id = :u "
                           "AND superseded_at IS NULL ORDER BY id", u=str(user))
    return [r[0] for r in found]


async def test_remember_then_memory_lists_the_fact_numbered_with_its_date(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    chat = 601
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        done = await _say(telegram, "/remember I am allergic to peanuts", chat, 1)
        assert done.plain_text == "Remembered: I am allergic to peanuts"
        await _say(telegram, "/remember My daughter is called Mia", chat, 2)
        listed = await _say(telegram, "/memory", chat, 3)

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert listed.plain_text is not None
    assert listed.plain_text.splitlines()[:3] == [
        "What I know about you:",
        f"1. I am allergic to peanuts ({today})",
        f"2. My daughter is called Mia ({today})",
    ]
    assert await rows(db, "SELECT user_id, source FROM facts ORDER BY id") == [
        (str(chat), "user"), (str(chat), "user")]
    assert fake_llm.chat_requests == []  # commands never reach the model


async def test_forget_by_number_removes_that_fact_and_the_next_prompt_lacks_it(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    chat = 602
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        await _say(telegram, "/remember I live in Moscow", chat, 1)
        await _say(telegram, "/remember I play the cello", chat, 2)
        gone = await _say(telegram, "/forget 1", chat, 3)
        assert gone.plain_text == "Forgotten: I live in Moscow"
        missing = await _say(telegram, "/forget 7", chat, 4)
        assert missing.plain_text == "There is no fact number 7. See the list: /memory"
        await _say(telegram, "where do I live?", chat, 5)

    assert await _facts(db, chat) == ["I play the cello"]
    assert await rows(db, "SELECT count(*) FROM facts WHERE content LIKE '%Moscow%'") == [(0,)]
    prompt = str(fake_llm.chat_requests[-1]["messages"])
    assert "cello" in prompt and "Moscow" not in prompt


async def test_forget_words_matching_two_facts_asks_with_buttons_and_the_pressed_one_goes(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    chat = 603
    ru = {"language_code": "ru"}
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        await _say(telegram, "/remember Моя собака Бим", chat, 1, **ru)
        await _say(telegram, "/remember Собака соседа лает по ночам", chat, 2, **ru)
        await _say(telegram, "/remember Работаю врачом", chat, 3, **ru)
        question = await _say(telegram, "/forget собака", chat, 4, **ru)
        assert question.plain_text == "Под «собака» подходит несколько фактов. Какой забыть?"
        keyboard = question.params["reply_markup"]["inline_keyboard"]
        labels = [row[0]["text"] for row in keyboard]
        assert labels == ["1. Моя собака Бим", "2. Собака соседа лает по ночам", "Отмена"]
        assert await _facts(db, chat) == [
            "Моя собака Бим", "Собака соседа лает по ночам", "Работаю врачом"]  # nothing yet

        ids = [r[0] for r in await rows(db, "SELECT id FROM facts ORDER BY id")]
        telegram.press(question, ForgetFact(fact_id=ids[1]).pack(), language_code="ru")
        edited = await telegram.wait_for("editMessageText", chat_id=chat)
        assert edited[0].plain_text == "Забыл: Собака соседа лает по ночам"
        assert int(edited[0].params["message_id"]) == question.result["message_id"]
        assert "inline_keyboard" not in str(edited[0].params.get("reply_markup"))
        assert telegram.calls_to("answerCallbackQuery")

        # The same button again (a double tap): the fact is already gone, nothing else is.
        telegram.press(question, ForgetFact(fact_id=ids[1]).pack(), language_code="ru")
        again = await telegram.wait_for("editMessageText", 2, chat_id=chat)
        assert again[1].plain_text == "Этого факта уже нет."
        one = await _say(telegram, "/forget врач", chat, 5, **ru)
        assert one.plain_text == "Забыл: Работаю врачом"  # one match: no question

    assert await _facts(db, chat) == ["Моя собака Бим"]


async def test_forget_all_asks_first_and_erases_messages_summaries_and_facts(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    chat, other = 604, 605
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        await _say(telegram, "/remember My name is Oleg", chat, 1)
        await _say(telegram, "hello there", chat, 2)
        await _say(telegram, "/remember I am the other user", other, 1)
        ask = await _say(telegram, "/forget_all", chat, 3)
        assert ask.plain_text is not None and ask.plain_text.startswith("Erase everything")
        assert len(await rows(db, "SELECT id FROM messages")) == 2  # asking erased nothing

        telegram.press(ask, EraseAll(confirm=False).pack())
        cancelled = await telegram.wait_for("editMessageText", chat_id=chat)
        assert cancelled[0].plain_text == "Cancelled."
        assert await _facts(db, chat) == ["My name is Oleg"]

        ask = await _say(telegram, "/forget_all", chat, 4)
        telegram.press(ask, EraseAll(confirm=True).pack())
        done = await telegram.wait_for("editMessageText", 2, chat_id=chat)
        assert done[1].plain_text == "Done: I erased everything I stored about you (2 messages)."
        empty = await _say(telegram, "/memory", chat, 5)
        assert empty.plain_text is not None and empty.plain_text.startswith("I don't know")

    assert await rows(db, "SELECT count(*) FROM chat_sessions WHERE user_id = :u",
                      u=str(chat)) == [(0,)]
    assert await rows(db, "SELECT count(*) FROM messages") == [(0,)]
    assert await rows(db, "SELECT count(*) FROM facts WHERE user_id = :u", u=str(chat)) == [(0,)]
    assert await _facts(db, other) == ["I am the other user"]  # only the presser's data


async def test_memory_commands_stay_out_of_groups_and_are_in_the_command_menu(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        await _say(telegram, "/remember I am secret", 606, 1)
        telegram.send_text("/memory@test_llm_bot", chat_id=-700, user_id=606,
                           chat_type="supergroup", language_code="ru")
        answer = await telegram.wait_for("sendMessage", chat_id=-700)
        await settle()

    assert answer[0].plain_text == "Память о вас показываю и меняю только в личном чате со мной."
    assert "secret" not in "".join(telegram.sent_texts(chat_id=-700))
    menus = {m.params.get("language_code"): [c["command"] for c in m.params["commands"]]
             for m in telegram.calls_to("setMyCommands")}
    for language in (None, "ru"):
        assert {"memory", "forget", "forget_all", "remember"} <= set(menus[language])


async def test_memory_calls_repeat_on_transient_failures_and_not_on_a_missing_fact() -> None:
    from aiohttp import web

    from llm_bot_core.bot.api_client import BackendClient, BackendError
    from llm_bot_core.bot.config import BotSettings
    from tests.bot_support import free_port

    seen: list[tuple[str, str]] = []
    script: list[tuple[int, dict[str, object]]] = [
        (503, {"type": "error", "code": "database_unavailable", "message": "db"}),
        (502, {"detail": "bad gateway"}),  # a proxy answering for a restarting backend
        (200, {"facts": [{"id": 5, "content": "Likes tea", "source": "user",
                          "created_at": "2026-12-01T04:00:00+00:00", "superseded_at": None,
                          "superseded_by": None}]}),
        (404, {"type": "error", "code": "fact_not_found", "message": "no fact"}),
    ]

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path))
        status, body = script.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = BackendClient(BotSettings(
        _env_file=None, bot_token="1:x", backend_url=f"http://127.0.0.1:{port}",
        backend_retries=3, backend_retry_backoff=0.01, backend_timeout=5))
    try:
        facts = await client.list_facts(user_id="a/b")
        assert [(f.id, f.content) for f in facts] == [(5, "Likes tea")]
        with pytest.raises(BackendError) as missing:
            await client.delete_fact(user_id="a/b", fact_id=5)
        assert missing.value.code == "fact_not_found"
    finally:
        await client.aclose()
        await runner.cleanup()
    assert seen == [("GET", "/v1/memory/users/a%2Fb/facts")] * 3 + [
        ("DELETE", "/v1/memory/users/a%2Fb/facts/5")]  # the 404 was not repeated
