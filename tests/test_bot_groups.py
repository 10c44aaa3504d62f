"""Two people in one group, each also in a private chat with the bot: the bot tells the backend
which chat is which and who is speaking, and nothing private crosses over.

The real aiogram bot polls the fake Telegram; the real backend (semantic memory on, Qdrant in
local mode) answers through the fake LLM, whose prompts are what these tests read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from llm_bot_core.testing.telegram_html import utf16_len
from tests.bot_support import (  # noqa: F401 - fixtures
    BackendServer,
    make_bot_settings,
    rows,
    running_bot,
    telegram_fixture,
    telegram_server_fixture,
)
from tests.conftest import make_settings

pytestmark = pytest.mark.asyncio

GROUP = -100777
ALICE, BOB = 11, 12
NAMES = {ALICE: "Alice", BOB: "Bob"}


@pytest.fixture
def rag_backend(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> Iterator[BackendServer]:
    settings = make_settings(
        clean_db, llm_server.base_url, rag_enabled=True, rag_embedder="local",
        qdrant_path=tmp_path / "qdrant", data_dir=tmp_path, short_history_limit=2, rag_timeout=30.0)
    with BackendServer(settings) as server:
        yield server


class Chats:
    """Sends as Alice or Bob, in the group (mentioning the bot) or in their private chat, and
    waits for the answer and for the backend to index the exchange."""

    def __init__(self, telegram: FakeTelegram, db: AsyncEngine) -> None:
        self.telegram = telegram
        self.db = db

    async def say(self, user: int, text: str, *, group: bool) -> str:
        chat = GROUP if group else user
        before = len(self.telegram.calls_to("sendMessage", chat_id=chat))
        fields: dict[str, Any] = {"chat_id": chat, "user_id": user, "first_name": NAMES[user]}
        if group:
            text = f"@test_llm_bot {text}"
            fields |= {"chat_type": "supergroup",
                       "entities": [{"type": "mention", "offset": 0,
                                     "length": utf16_len("@test_llm_bot")}]}
        self.telegram.push_update({"message": self.telegram.message(text, **fields)})
        sent = await self.telegram.wait_for("sendMessage", before + 1, chat_id=chat)
        await self._indexed()
        return sent[-1].plain_text or ""

    async def _indexed(self) -> None:
        async with asyncio.timeout(30):
            while (await rows(self.db, "SELECT (SELECT count(*) FROM rag_outbox) + "
                                       "(SELECT count(*) FROM messages m WHERE NOT EXISTS "
                                       "(SELECT 1 FROM embeddings e WHERE e.message_id = m.id))"
                              ))[0][0] > 0:
                await asyncio.sleep(0.05)


def prompt_text(fake: FakeLLM) -> str:
    return "\n".join(str(m["content"]) for m in fake.chat_requests[-1]["messages"])


async def test_group_and_private_chats_through_the_bot_keep_speakers_and_privacy_apart(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, rag_backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:
    chats = Chats(telegram, db)
    async with running_bot(make_bot_settings(telegram_server, rag_backend.url)):
        await chats.say(BOB, "Мой PIN-код банковской карты 7314.", group=False)
        await chats.say(BOB, "Спасибо, до завтра.", group=False)
        await chats.say(ALICE, "Привет всем, я сегодня пеку пирог!", group=True)
        await chats.say(BOB, "У меня аллергия на арахис, живу на улице Ленина 5.", group=True)
        await chats.say(ALICE, "Учту, пирог будет без орехов.", group=True)

        # Bob asks in the group: his private PIN must not be recalled where everyone reads it.
        answer = await chats.say(BOB, "Какой у меня PIN-код банковской карты?", group=True)
        assert answer == "Echo: [Bob] Какой у меня PIN-код банковской карты?"
        assert "7314" not in prompt_text(fake_llm)

        # Alice in private: Bob's group words are not her memory.
        await chats.say(ALICE, "На что у меня аллергия? Где я живу?", group=False)
        assert "арахис" not in prompt_text(fake_llm) and "Ленина" not in prompt_text(fake_llm)

        # The bot said who spoke and what kind of chat it was.
        assert await rows(db, """SELECT s.chat_id, s.chat_type, s.user_id, m.user_id, m.user_name
                                 FROM messages m JOIN chat_sessions s ON s.id = m.session_id
                                 WHERE m.role = 'user' ORDER BY m.id""") == [
            (str(BOB), "private", str(BOB), str(BOB), "Bob"),
            (str(BOB), "private", str(BOB), str(BOB), "Bob"),
            (str(GROUP), "supergroup", None, str(ALICE), "Alice"),
            (str(GROUP), "supergroup", None, str(BOB), "Bob"),
            (str(GROUP), "supergroup", None, str(ALICE), "Alice"),
            (str(GROUP), "supergroup", None, str(BOB), "Bob"),
            (str(ALICE), "private", str(ALICE), str(ALICE), "Alice"),
        ]

        async with httpx.AsyncClient(base_url=rag_backend.url) as api:
            erased = await api.delete(f"/v1/memory/users/{BOB}")
        assert erased.status_code == 200, erased.text

        # Bob's allergy and address are gone from the group's memory; Alice's pie is not.
        await chats.say(ALICE, "У кого аллергия на арахис? Кто живёт на улице Ленина?",
                        group=True)
        prompt = prompt_text(fake_llm).replace(
            "У кого аллергия на арахис? Кто живёт на улице Ленина?", "")
        assert "арахис" not in prompt and "Ленина" not in prompt and "[Bob]" not in prompt
        await chats.say(ALICE, "Что я сегодня пеку?", group=True)
        assert "[Alice] Привет всем, я сегодня пеку пирог!" in prompt_text(fake_llm)
