"""Pictures end to end: real aiogram polling a fake Telegram that serves the files (getFile and
the file URL), the real backend, real PostgreSQL, the fake LLM that opens the pictures."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, decode_image, image_urls, text_of
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from tests.bot_support import (  # noqa: F401 - fixtures
    BackendServer,
    backend_fixture,
    make_bot_settings,
    rows,
    running_bot,
    telegram_fixture,
    telegram_server_fixture,
)
from tests.conftest import make_settings
from tests.test_pictures import jpeg

pytestmark = pytest.mark.asyncio


async def stored_user_messages(db: AsyncEngine, within: float = 10.0, *, described: int = 0
                               ) -> list[str]:  # fmt: skip
    """The stored user messages, once `described` of them hold a description."""
    deadline = time.monotonic() + within
    while True:
        found = [r[0] for r in await rows(
            db, "SELECT content FROM messages WHERE role = 'user' ORDER BY id")]  # fmt: skip
        if sum("[Picture: " in c for c in found) >= described or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_a_photo_with_a_caption_reaches_the_model_and_its_description_is_stored_later(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:  # fmt: skip
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_photo(jpeg(640, 480), "Что это за цвет?", chat_id=601, user_id=601)
        sent = await telegram.wait_for("sendMessage", chat_id=601)

    assert sent[0].plain_text == "Echo: [Picture]\nЧто это за цвет?"
    [request] = fake_llm.chat_requests
    [url] = image_urls(request["messages"])
    assert decode_image(url).size == (640, 480)  # the largest photo size was fetched
    assert text_of(request["messages"][-1]["content"]).endswith("Что это за цвет?")
    [get_file] = telegram.calls_to("getFile")
    assert telegram.file_bytes(get_file.params["file_id"]) == jpeg(640, 480)
    assert telegram.calls_to("_download")
    assert await stored_user_messages(db, described=1) == [
        "[Picture: A mostly red picture, 640x480 pixels.]\nЧто это за цвет?"
    ]


async def test_a_photo_without_caption_and_an_image_document_are_answered(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:  # fmt: skip
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_photo(jpeg(100, 100, (0, 0, 255)), chat_id=602, user_id=602)
        await telegram.wait_for("sendMessage", chat_id=602)
        telegram.send_photo(jpeg(80, 60, (0, 160, 0)), "a document", as_document=True,
                            mime_type="image/jpeg", chat_id=602, user_id=602)  # fmt: skip
        sent = await telegram.wait_for("sendMessage", 2, chat_id=602)

    assert [c.plain_text for c in sent] == ["Echo: [Picture]", "Echo: [Picture]\na document"]
    assert [len(image_urls(r["messages"])) for r in fake_llm.chat_requests] == [1, 1]
    assert await stored_user_messages(db, described=2) == [
        "[Picture: A mostly blue picture, 100x100 pixels.]",
        "[Picture: A mostly green picture, 80x60 pixels.]\na document",
    ]


async def test_an_album_is_one_message_with_all_its_pictures(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:  # fmt: skip
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        for index, colour in enumerate(((255, 0, 0), (0, 0, 255), (255, 255, 0))):
            telegram.send_photo(jpeg(50, 50, colour), "three colours" if index == 1 else None,
                                media_group_id="album-1", chat_id=603, user_id=603)  # fmt: skip
        sent = await telegram.wait_for("sendMessage", chat_id=603)
        await asyncio.sleep(1.0)  # no second answer comes

    assert len(telegram.calls_to("sendMessage", chat_id=603)) == 1
    assert sent[0].plain_text == "Echo: [Picture]\n[Picture]\n[Picture]\nthree colours"
    [request] = fake_llm.chat_requests
    assert len(image_urls(request["messages"])) == 3
    [stored] = await stored_user_messages(db, described=1)
    assert stored.splitlines() == [
        "[Picture: A mostly red picture, 50x50 pixels.]",
        "[Picture: A mostly blue picture, 50x50 pixels.]",
        "[Picture: A mostly yellow picture, 50x50 pixels.]",
        "three colours",
    ]


@pytest.mark.parametrize(
    ("language", "expected"),
    [("ru", "не умеет смотреть картинки"), ("en", "cannot look at pictures")],
)
async def test_a_model_that_cannot_read_pictures_is_explained_in_the_users_language(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, settings: Settings,
    fake_llm: FakeLLM, clean_db: str, language: str, expected: str,
) -> None:  # fmt: skip
    no_pictures = make_settings(clean_db, settings.llm.llm_base_url, images_supported=False)
    with BackendServer(no_pictures) as backend:
        async with running_bot(make_bot_settings(telegram_server, backend.url)):
            telegram.send_photo(jpeg(), "look", chat_id=604, user_id=604,
                                language_code=language)  # fmt: skip
            configured = await telegram.wait_for("sendMessage", chat_id=604)
    fake_llm.vision = False  # the provider refuses the image parts
    with BackendServer(settings) as backend:
        async with running_bot(make_bot_settings(telegram_server, backend.url)):
            telegram.send_photo(jpeg(), "look", chat_id=605, user_id=605,
                                language_code=language)  # fmt: skip
            refused = await telegram.wait_for("sendMessage", chat_id=605)
    assert expected in (configured[0].plain_text or "")
    assert expected in (refused[0].plain_text or "")


async def test_a_picture_the_backend_cannot_open_is_refused_politely(
    telegram: FakeTelegram, telegram_server: FakeTelegramServer, backend: BackendServer,
    fake_llm: FakeLLM, db: AsyncEngine,
) -> None:  # fmt: skip
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        message = telegram.photo_message(b"GIF89a not really", "broken", as_document=True,
                                         mime_type="image/gif", chat_id=606, user_id=606,
                                         language_code="ru")  # fmt: skip
        telegram.push_update({"message": message})
        sent = await telegram.wait_for("sendMessage", chat_id=606)
    assert "Не получилось открыть эту картинку" in (sent[0].plain_text or "")
    assert fake_llm.chat_requests == []
    assert await rows(db, "SELECT count(*) FROM messages") == [(0,)]
