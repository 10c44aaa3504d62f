"""Voice end to end: real aiogram polling the fake Bot API (getFile, file downloads), the real
backend under uvicorn, the fake speech-to-text server, real PostgreSQL."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.texts import t
from llm_bot_core.config import Settings
from llm_bot_core.memory.prompt import VOICE_MARKER
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer
from llm_bot_core.testing.fake_transcription import FakeTranscription, FakeTranscriptionServer
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
from tests.voice_support import (  # noqa: F401 - fixtures
    VOICE_OGG,
    fake_transcription_fixture,
    transcription_server_fixture,
)

TRANSCRIPT = "Напомни, пожалуйста, купить молоко"


@pytest.fixture
def voice_settings(
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
) -> Settings:
    return make_settings(
        clean_db, llm_server.base_url, transcription_base_url=transcription_server.base_url
    )


@pytest.fixture
def voice_backend(voice_settings: Settings) -> Iterator[BackendServer]:
    with BackendServer(voice_settings) as server:
        yield server


@dataclass(frozen=True)
class VoiceBot:
    """The fakes, the backend with transcription on, and the database a voice test uses."""

    telegram: FakeTelegram
    telegram_server: FakeTelegramServer
    backend: BackendServer
    llm: FakeLLM
    transcription: FakeTranscription
    db: AsyncEngine

    def bot_settings(self, **overrides: Any) -> BotSettings:
        return make_bot_settings(self.telegram_server, self.backend.url, **overrides)

    def bot(self, **overrides: Any) -> running_bot:
        return running_bot(self.bot_settings(**overrides))


@pytest.fixture
def env(
    telegram: FakeTelegram,
    telegram_server: FakeTelegramServer,
    voice_backend: BackendServer,
    fake_llm: FakeLLM,
    fake_transcription: FakeTranscription,
    db: AsyncEngine,
) -> VoiceBot:
    return VoiceBot(telegram, telegram_server, voice_backend, fake_llm, fake_transcription, db)


def answers(telegram: FakeTelegram, chat_id: int) -> list[str]:
    return telegram.sent_texts(chat_id)


async def stored(db: AsyncEngine) -> list[tuple[Any, ...]]:
    return await rows(db, "SELECT role, content, input_mode FROM messages ORDER BY id")


async def test_a_voice_message_is_quoted_answered_and_remembered_as_spoken(env: VoiceBot) -> None:
    env.transcription.script(VOICE_OGG, TRANSCRIPT)
    async with env.bot():
        env.telegram.send_voice(VOICE_OGG, 3, chat_id=601, user_id=601, language_code="ru")
        await env.telegram.wait_for("sendMessage", 2, chat_id=601)
        env.telegram.send_text("/usage", chat_id=601, user_id=601, language_code="ru")
        sent = await env.telegram.wait_for("sendMessage", 3, chat_id=601)

    quote, answer, usage = sent
    assert quote.params["text"] == f"<blockquote>{TRANSCRIPT}</blockquote>"
    assert quote.params["parse_mode"] == "HTML" and quote.plain_text == TRANSCRIPT
    assert answer.plain_text == f"Echo: {VOICE_MARKER}\n{TRANSCRIPT}"
    assert quote.at < answer.at
    # /usage counts the recording's seconds beside the tokens.
    assert str(usage.plain_text).split("\n")[1] == "Голосовых распознано: 1 (3 с)."
    # Downloaded through getFile and the file URL, sent on as the OGG it is.
    [get_file] = env.telegram.calls_to("getFile")
    assert env.telegram.downloads == [get_file.result["file_path"]]
    [request] = env.transcription.requests
    assert (request.filename, request.content_type, request.size) == (
        "voice.ogg",
        "audio/ogg",
        len(VOICE_OGG),
    )
    assert await stored(env.db) == [
        ("user", TRANSCRIPT, "voice"),
        ("assistant", f"Echo: {VOICE_MARKER}\n{TRANSCRIPT}", "text"),
    ]
    assert await rows(env.db, "SELECT purpose, audio_seconds FROM llm_usage ORDER BY id") == [
        ("transcription", 3.0),
        ("chat", None),
    ]


async def test_show_transcript_off_answers_without_the_quote(env: VoiceBot) -> None:
    async with env.bot(show_transcript=False):
        env.telegram.send_voice(VOICE_OGG, 3, chat_id=602, user_id=602)
        await env.telegram.wait_for("sendMessage", 1, chat_id=602)
        await settle()
    assert answers(env.telegram, 602) == [f"Echo: {VOICE_MARKER}\nHello from a voice message"]


def tiny_mp4(seconds: int) -> bytes:
    """The boxes of an MP4 that state its duration (a video note's container)."""
    mvhd = struct.pack(">B3xIIII", 0, 0, 0, 1000, 1000 * seconds)
    moov = struct.pack(">I4s", 16 + len(mvhd), b"moov") + struct.pack(
        ">I4s", 8 + len(mvhd), b"mvhd"
    )
    return struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0) + moov + mvhd


async def test_a_video_note_and_an_audio_file_are_transcribed_too(env: VoiceBot) -> None:
    env.transcription.say_next("circle", "song")
    note = {**env.telegram.add_file(tiny_mp4(5), suffix="mp4"), "length": 240, "duration": 5}
    audio = {
        **env.telegram.add_file(VOICE_OGG),
        "duration": 3,
        "file_name": "memo.ogg",
        "mime_type": "audio/ogg",
    }
    async with env.bot():
        note_message = env.telegram.message(None, chat_id=603, user_id=603, video_note=note)
        env.telegram.push_update({"message": note_message})
        await env.telegram.wait_for("sendMessage", 2, chat_id=603)
        with_audio = env.telegram.message(None, chat_id=603, user_id=603, audio=audio, caption="hi")
        env.telegram.push_update({"message": with_audio})
        await env.telegram.wait_for("sendMessage", 4, chat_id=603)
    assert [(r.filename, r.content_type) for r in env.transcription.requests] == [
        ("video_note.mp4", "video/mp4"),
        ("memo.ogg", "audio/ogg"),
    ]
    assert [r[1] for r in await stored(env.db) if r[0] == "user"] == ["circle", "song"]


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_without_transcription_the_refusal_is_polite_localized_and_names_the_settings(
    telegram: FakeTelegram,
    telegram_server: FakeTelegramServer,
    backend: BackendServer,
    fake_llm: FakeLLM,
    db: AsyncEngine,
    lang: str,
) -> None:
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        telegram.send_voice(VOICE_OGG, 3, chat_id=604, user_id=604, language_code=lang)
        await telegram.wait_for("sendMessage", 1, chat_id=604)
        await settle()
    [refusal] = answers(telegram, 604)
    assert refusal == t("voice_not_configured", lang)  # type: ignore[arg-type]
    assert "TRANSCRIPTION_BASE_URL" in refusal and "OPENAI_API_KEY" in refusal
    assert await stored(db) == []
    assert fake_llm.chat_requests == []


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_nothing_recognised_is_said_so_and_nothing_is_stored(
    env: VoiceBot,
    lang: str,
) -> None:
    env.transcription.say_next("   ")
    async with env.bot():
        env.telegram.send_voice(VOICE_OGG, 3, chat_id=605, user_id=605, language_code=lang)
        await env.telegram.wait_for("sendMessage", 1, chat_id=605)
        await settle()
    assert answers(env.telegram, 605) == [t("voice_empty", lang)]  # type: ignore[arg-type]
    assert await stored(env.db) == []
    assert env.llm.chat_requests == []


async def test_a_provider_failure_is_reported_and_nothing_is_stored(env: VoiceBot) -> None:
    env.transcription.fail_next(503, "overloaded", count=5)
    async with env.bot():
        env.telegram.send_voice(VOICE_OGG, 3, chat_id=606, user_id=606, language_code="ru")
        await env.telegram.wait_for("sendMessage", 1, chat_id=606)
        await settle()
    assert answers(env.telegram, 606) == [t("voice_unavailable", "ru")]
    assert await stored(env.db) == []


async def test_too_long_recordings_are_refused_before_downloading(env: VoiceBot) -> None:
    async with env.bot(voice_max_seconds=120):
        env.telegram.send_voice(VOICE_OGG, 121, chat_id=607, user_id=607, language_code="ru")
        env.telegram.send_voice(VOICE_OGG, 121, chat_id=608, user_id=608, language_code="en")
        await env.telegram.wait_for("sendMessage", 1, chat_id=607)
        await env.telegram.wait_for("sendMessage", 1, chat_id=608)
    assert answers(env.telegram, 607) == [t("voice_too_long", "ru", limit="2 мин")]
    assert answers(env.telegram, 608) == [t("voice_too_long", "en", limit="2 min")]
    assert env.telegram.calls_to("getFile") == [] and env.telegram.downloads == []
    assert env.transcription.requests == []


async def test_the_backends_duration_limit_is_told_the_same_way(
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    telegram: FakeTelegram,
    telegram_server: FakeTelegramServer,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
    db: AsyncEngine,
) -> None:
    # Telegram says 1 s, the container 3 s; the backend (VOICE_MAX_SECONDS=2) trusts the file.
    settings = make_settings(
        clean_db,
        llm_server.base_url,
        transcription_base_url=transcription_server.base_url,
        voice_max_seconds=2,
    )
    with BackendServer(settings) as backend:
        bot_settings = make_bot_settings(telegram_server, backend.url, voice_max_seconds=120)
        async with running_bot(bot_settings):
            telegram.send_voice(VOICE_OGG, 1, chat_id=609, user_id=609)
            await telegram.wait_for("sendMessage", 1, chat_id=609)
    assert answers(telegram, 609) == [t("voice_too_long", "en", limit="2 min")]
    assert fake_transcription.requests == []


async def test_too_large_files_are_refused_before_or_while_downloading(env: VoiceBot) -> None:
    understated = {**env.telegram.add_file(VOICE_OGG, reported_size=100), "duration": 3}
    async with env.bot(voice_max_bytes=4096):
        env.telegram.send_voice(VOICE_OGG, 3, chat_id=610, user_id=610, language_code="ru")
        await env.telegram.wait_for("sendMessage", 1, chat_id=610)
        assert env.telegram.calls_to("getFile") == []  # the message's file_size said enough
        # A size Telegram understated is caught while the bytes arrive.
        understated_message = env.telegram.message(
            None, chat_id=611, user_id=611, voice=understated
        )
        env.telegram.push_update({"message": understated_message})
        await env.telegram.wait_for("sendMessage", 1, chat_id=611)
    assert answers(env.telegram, 610) == [t("voice_too_large", "ru", size="4 КБ")]
    assert answers(env.telegram, 611) == [t("voice_too_large", "en", size="4 KB")]
    assert env.transcription.requests == []


async def test_a_slow_transcription_does_not_hold_up_other_chats(env: VoiceBot) -> None:
    env.transcription.latency = 1.5
    async with env.bot():
        env.telegram.send_voice(VOICE_OGG, 3, chat_id=612, user_id=612)
        await settle(0.2)
        env.telegram.send_text("quick question", chat_id=613, user_id=613)
        [text_answer] = await env.telegram.wait_for("sendMessage", 1, chat_id=613)
        voice_answers = await env.telegram.wait_for("sendMessage", 2, chat_id=612)
    assert text_answer.at < voice_answers[0].at


async def test_in_a_group_the_quote_answers_the_voice_message_and_a_long_one_is_shortened(
    env: VoiceBot,
) -> None:
    long_text = "слово " * 1000  # 6,000 characters: more than one Telegram message
    env.transcription.say_next(long_text)
    bot_message = {
        "message_id": 1,
        "date": 0,
        "chat": {"id": -100614, "type": "supergroup", "title": "Test group"},
        "from": env.telegram.bot_user,
        "text": "earlier answer",
    }
    voice = {**env.telegram.add_file(VOICE_OGG), "duration": 3}
    async with env.bot():
        sent = env.telegram.message(None, chat_id=-100614, user_id=614, chat_type="supergroup",
                                    voice=voice, reply_to_message=bot_message)  # fmt: skip
        env.telegram.push_update({"message": sent})
        calls = await env.telegram.wait_for("sendMessage", 3, chat_id=-100614)
    quote = calls[0]
    assert quote.params["reply_parameters"]["message_id"] == sent["message_id"]
    assert quote.plain_text is not None and quote.plain_text.endswith("…")
    assert len(quote.plain_text) <= 3500
    # The whole transcript is the user's message, however long the quote was.
    assert await rows(env.db, "SELECT content, input_mode FROM messages WHERE role = 'user'") == [
        (" ".join(long_text.split()), "voice")
    ]
