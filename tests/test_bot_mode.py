"""/mode end to end: real aiogram polling a fake Telegram, the real backend and PostgreSQL; the
persona buttons pressed as Telegram sends them (callback_query)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.handlers.mode import ChooseMode
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

pytestmark = pytest.mark.asyncio


async def _add_personas(db: AsyncEngine, backend: BackendServer) -> dict[str, int]:
    """Two selectable personas and a hidden one; returns once the backend offers them."""
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO personas (name, instruction, model, selectable) VALUES "
                "('Pirate', 'Talk like a pirate.', 'pirate-model', true), "
                "('Poet', 'Answer in verse.', NULL, true), "
                "('Internal', 'Operators only.', NULL, false)"
            )
        )
    async with httpx.AsyncClient(base_url=backend.url) as client:
        for _ in range(100):
            listed = (await client.get("/v1/personas")).json()["personas"]
            if len(listed) == 3:  # the default and the two new ones, via NOTIFY
                return {p["name"]: p["id"] for p in listed}
            await asyncio.sleep(0.05)
    raise AssertionError("the backend never offered the new personas")


async def test_mode_offers_selectable_personas_and_a_press_changes_the_next_answer(
    telegram: FakeTelegram,
    telegram_server: FakeTelegramServer,
    backend: BackendServer,
    fake_llm: FakeLLM,
    db: AsyncEngine,
) -> None:
    ids = await _add_personas(db, backend)
    chat = 701
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("/mode", chat_id=chat, user_id=chat)
        shown = (await telegram.wait_for("sendMessage", chat_id=chat))[0]
        assert shown.plain_text == "Now: Default. Choose how I should answer in this chat:"
        keyboard = shown.params["reply_markup"]["inline_keyboard"]
        assert [row[0]["text"] for row in keyboard] == ["✓ Default", "Pirate", "Poet"]
        assert keyboard[1][0]["callback_data"] == ChooseMode(persona_id=ids["Pirate"]).pack()

        telegram.press(shown, ChooseMode(persona_id=ids["Pirate"]).pack())
        edited = (await telegram.wait_for("editMessageText", chat_id=chat))[0]
        assert edited.plain_text == "Done: from now on I answer as “Pirate”."
        assert telegram.calls_to("answerCallbackQuery")

        telegram.send_text("where is the treasure?", chat_id=chat, user_id=chat)
        await telegram.wait_for("sendMessage", 2, chat_id=chat)

        telegram.send_text("/mode", chat_id=chat, user_id=chat)
        again = (await telegram.wait_for("sendMessage", 3, chat_id=chat))[2]
        ticked = [row[0]["text"] for row in again.params["reply_markup"]["inline_keyboard"]]
        assert ticked == ["Default", "✓ Pirate", "Poet"]

    request = fake_llm.chat_requests[-1]
    assert request["messages"][0]["content"].startswith("Talk like a pirate.")
    assert request["model"] == "pirate-model"
    assert await rows(db, "SELECT chat_id, persona_id FROM chat_settings") == [
        (str(chat), ids["Pirate"])
    ]


async def test_mode_in_russian_and_a_persona_removed_before_the_press(
    telegram: FakeTelegram,
    telegram_server: FakeTelegramServer,
    backend: BackendServer,
    fake_llm: FakeLLM,
    db: AsyncEngine,
) -> None:
    ids = await _add_personas(db, backend)
    chat = 702
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_text("/mode", chat_id=chat, user_id=chat, language_code="ru")
        shown = (await telegram.wait_for("sendMessage", chat_id=chat))[0]
        assert shown.plain_text == "Сейчас: Default. Выберите, как мне отвечать в этом чате:"

        async with db.begin() as conn:  # an operator hides it meanwhile
            await conn.execute(text("UPDATE personas SET selectable = false WHERE name = 'Poet'"))
        telegram.press(shown, ChooseMode(persona_id=ids["Poet"]).pack(), language_code="ru")
        edited = (await telegram.wait_for("editMessageText", chat_id=chat))[0]
        assert edited.plain_text == "Этого режима больше нет. Наберите /mode, чтобы выбрать другой."
        await settle()

    assert await rows(db, "SELECT count(*) FROM chat_settings") == [(0,)]
    menus = {
        m.params.get("language_code"): [c["command"] for c in m.params["commands"]]
        for m in telegram.calls_to("setMyCommands")
    }
    assert "mode" in menus[None] and "mode" in menus["ru"]
    assert fake_llm.chat_requests == []
