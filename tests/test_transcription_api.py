"""POST /v1/media/transcriptions through the real app, PostgreSQL and the fake speech-to-text
server (the real openai SDK on the wire), and `input_mode: "voice"` on the chat endpoints."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.media.audio import AudioUnreadable, audio_duration
from llm_bot_core.memory.prompt import VOICE_MARKER
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from llm_bot_core.testing.fake_transcription import FakeTranscription, FakeTranscriptionServer
from tests.conftest import make_settings, running_app
from tests.test_api import assert_error, rows
from tests.test_usage import set_user
from tests.voice_support import (
    VOICE_OGG,
    VOICE_SECONDS,
    fake_transcription_fixture,
    tone_wav,
    transcription_server_fixture,
)

_ = (fake_transcription_fixture, transcription_server_fixture)

PATH = "/v1/media/transcriptions"


def voice_settings(
    clean_db: str, llm: FakeLLMServer, stt: FakeTranscriptionServer, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {"transcription_base_url": stt.base_url, **overrides}
    return make_settings(clean_db, llm.base_url, **values)


async def upload(
    client: httpx.AsyncClient,
    audio: bytes = VOICE_OGG,
    *,
    user: str = "alice",
    chat: str = "alice",
    filename: str = "voice.ogg",
    mime: str = "audio/ogg",
    **fields: str,
) -> httpx.Response:
    return await client.post(
        PATH,
        files={"audio": (filename, audio, mime)},
        data={"user_id": user, "chat_id": chat, **fields},
    )


async def usage_rows(client: httpx.AsyncClient, db: AsyncEngine) -> list[tuple[Any, ...]]:
    await client.app.state.services.ledger.flush()  # type: ignore[attr-defined]
    return await rows(
        db,
        "SELECT user_id, chat_id, purpose, model, prompt_tokens + completion_tokens, "
        "audio_seconds FROM llm_usage ORDER BY id",
    )


@pytest.fixture
def settings_voice(
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
) -> Settings:
    return voice_settings(clean_db, llm_server, transcription_server)


async def test_a_voice_message_comes_back_as_text_and_its_audio_seconds_are_accounted(
    settings_voice: Settings, db: AsyncEngine, fake_transcription: FakeTranscription
) -> None:
    fake_transcription.script(VOICE_OGG, "  Привет,   как  дела?\n")
    async with running_app(settings_voice) as client:
        response = await upload(client, user="alice", chat="chat-1")
        assert response.status_code == 200, response.text
        assert response.json() == {
            "text": "Привет, как дела?",
            "audio_seconds": VOICE_SECONDS,
            "model": "whisper-1",
            "language": None,
        }
        assert await usage_rows(client, db) == [
            ("alice", "chat-1", "transcription", "whisper-1", 0, VOICE_SECONDS)
        ]
    [sent] = fake_transcription.requests
    assert (sent.model, sent.filename, sent.content_type) == ("whisper-1", "voice.ogg", "audio/ogg")
    assert sent.size == len(VOICE_OGG) and sent.response_format == "json"
    # The transcript is the client's to send on: nothing is in memory yet.
    assert await rows(db, "SELECT count(*) FROM messages") == [(0,)]


async def test_the_language_hint_and_model_reach_the_provider(
    clean_db: str,
    db: AsyncEngine,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
) -> None:
    settings = voice_settings(
        clean_db, llm_server, transcription_server, transcription_model="whisper-large-v3-turbo"
    )
    async with running_app(settings) as client:
        response = await upload(client, language="ru")
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "whisper-large-v3-turbo"
    assert fake_transcription.requests[0].language == "ru"
    assert fake_transcription.requests[0].model == "whisper-large-v3-turbo"


async def test_without_a_configured_endpoint_the_answer_says_what_to_set(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url)
    async with running_app(settings) as client:
        body = assert_error(await upload(client), 503, "transcription_not_configured")
        assert "TRANSCRIPTION_BASE_URL" in body["message"]
        assert "OPENAI_API_KEY" in body["message"]
        assert await usage_rows(client, db) == []


async def test_a_provider_failure_is_502_and_nothing_is_accounted(
    settings_voice: Settings, db: AsyncEngine, fake_transcription: FakeTranscription
) -> None:
    fake_transcription.fail_next(500, "the GPU caught fire")
    async with running_app(settings_voice) as client:
        body = assert_error(await upload(client), 502, "transcription_unavailable")
        assert "500" in body["message"] and "the GPU caught fire" in body["message"]
        assert await usage_rows(client, db) == []


async def test_an_unreachable_provider_is_502(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(
        clean_db, llm_server.base_url, transcription_base_url="http://127.0.0.1:9/v1"
    )
    async with running_app(settings) as client:
        assert_error(await upload(client), 502, "transcription_unavailable")


async def test_nothing_recognised_is_422_stores_nothing_but_the_billed_call(
    settings_voice: Settings, db: AsyncEngine, fake_transcription: FakeTranscription
) -> None:
    fake_transcription.say_next(" \n ")
    async with running_app(settings_voice) as client:
        assert_error(await upload(client), 422, "transcription_empty")
        assert await usage_rows(client, db) == [
            ("alice", "alice", "transcription", "whisper-1", 0, VOICE_SECONDS)
        ]
    assert await rows(db, "SELECT count(*) FROM messages") == [(0,)]


@pytest.mark.parametrize(
    "audio",
    [b"", b"definitely not audio", VOICE_OGG[: len(VOICE_OGG) // 2], b"OggS" + b"\0" * 40],
    ids=["empty", "text", "truncated-ogg", "broken-ogg"],
)
async def test_what_is_not_a_readable_recording_is_422_and_never_sent(
    settings_voice: Settings, fake_transcription: FakeTranscription, audio: bytes
) -> None:
    async with running_app(settings_voice) as client:
        assert_error(await upload(client, audio), 422, "audio_unreadable")
    assert fake_transcription.requests == []


async def test_an_unknown_container_is_sent_with_the_declared_duration(
    settings_voice: Settings, fake_transcription: FakeTranscription
) -> None:
    # The fake, like OpenAI, refuses what it cannot decode ("Invalid file format"): the
    # client's input, so 422 audio_unreadable, not a provider failure. That it answered shows
    # the upload went out on the strength of the client's duration.
    async with running_app(settings_voice) as client:
        body = assert_error(
            await upload(client, b"ID3" + b"\0" * 64, duration="4"), 422, "audio_unreadable"
        )
        assert "Invalid file format" in body["message"]
        assert_error(await upload(client, b"ID3" + b"\0" * 64, duration="999"), 413,
                     "audio_too_long")  # fmt: skip
        for bad in ("inf", "nan", "-1", "1e300"):
            assert_error(await upload(client, duration=bad), 422, "validation_error")
    assert len(fake_transcription.requests) == 1


async def test_a_recording_longer_than_voice_max_seconds_is_413_and_never_sent(
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
) -> None:
    settings = voice_settings(clean_db, llm_server, transcription_server, voice_max_seconds=2)
    async with running_app(settings) as client:
        body = assert_error(await upload(client), 413, "audio_too_long")
        assert "VOICE_MAX_SECONDS" in body["message"]
        # The container's duration counts, not the one the client declares.
        assert_error(await upload(client, duration="1"), 413, "audio_too_long")
    assert fake_transcription.requests == []


async def test_the_route_has_its_own_body_limit(
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
) -> None:
    # Ten seconds of WAV (320 KB) pass here though MAX_BODY_BYTES is 256 KB...
    wav = tone_wav(10)
    assert len(wav) > 256 * 1024
    settings = voice_settings(clean_db, llm_server, transcription_server)
    async with running_app(settings) as client:
        response = await upload(client, wav, filename="a.wav", mime="audio/wav")
        assert response.status_code == 200, response.text
        assert response.json()["audio_seconds"] == 10.0
        # ...and the chat endpoint keeps its own.
        big = {"user_id": "u", "chat_id": "c", "text": "x" * (300 * 1024)}
        assert_error(await client.post("/v1/chat/handle", json=big), 413, "payload_too_large")
    # VOICE_MAX_BYTES bounds the recording: over it, 413 before anything is sent on.
    settings = voice_settings(clean_db, llm_server, transcription_server, voice_max_bytes=100_000)
    async with running_app(settings) as client:
        assert_error(await upload(client, wav), 413, "payload_too_large")
        assert_error(await upload(client, tone_wav(3.2)), 413, "payload_too_large")
    assert len(fake_transcription.requests) == 1


async def test_a_blocked_user_and_a_spent_budget_are_refused_before_transcribing(
    settings_voice: Settings, db: AsyncEngine, fake_transcription: FakeTranscription
) -> None:
    await set_user(db, "mallory", blocked=True)
    await set_user(db, "bob", limit=10)
    async with db.begin() as conn:
        from sqlalchemy import text

        await conn.execute(
            text(
                "INSERT INTO llm_usage (created_at, user_id, chat_id, purpose, model, "
                "prompt_tokens, completion_tokens) VALUES (now(), 'bob', 'bob', 'chat', 'm', 8, 4)"
            )
        )
    async with running_app(settings_voice) as client:
        assert_error(await upload(client, user="mallory", chat="mallory"), 403, "user_blocked")
        response = await upload(client, user="bob", chat="bob")
        assert_error(response, 429, "budget_exceeded")
        assert int(response.headers["Retry-After"]) > 0
    assert fake_transcription.requests == []


async def test_a_transcript_sent_as_voice_is_stored_and_marked_in_the_prompt(
    settings_voice: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    async with running_app(settings_voice) as client:
        text = (await upload(client)).json()["text"]
        voice = {"user_id": "alice", "chat_id": "alice", "text": text, "input_mode": "voice"}
        assert (await client.post("/v1/chat/handle", json=voice)).status_code == 200
        typed = {"user_id": "alice", "chat_id": "alice", "text": "And this I typed"}
        assert (await client.post("/v1/chat/handle", json=typed)).status_code == 200
        streamed = {**voice, "text": "Streamed and spoken"}
        async with client.stream("POST", "/v1/chat/stream", json=streamed) as response:
            assert response.status_code == 200
            assert "event: done" in (await response.aread()).decode()
        bad = {**typed, "input_mode": "telepathy"}
        assert_error(await client.post("/v1/chat/handle", json=bad), 422, "validation_error")
    assert await rows(
        db, "SELECT role, content, input_mode FROM messages WHERE role = 'user' ORDER BY id"
    ) == [
        ("user", text, "voice"),
        ("user", "And this I typed", "text"),
        ("user", "Streamed and spoken", "voice"),
    ]
    first, second, third = (r["messages"] for r in fake_llm.chat_requests[-3:])
    assert first[-1]["content"] == f"{VOICE_MARKER}\n{text}"
    # The window shows the earlier voice message marked, the typed one as it is.
    assert f"{VOICE_MARKER}\n{text}" in [m["content"] for m in second]
    assert second[-1]["content"] == "And this I typed"
    assert third[-1]["content"] == f"{VOICE_MARKER}\nStreamed and spoken"


def test_durations_are_read_from_ogg_wav_and_mp4_containers() -> None:
    assert audio_duration(VOICE_OGG) == VOICE_SECONDS
    assert audio_duration(tone_wav(1.5)) == 1.5
    mvhd = struct.pack(">B3xIIII", 0, 0, 0, 600, 600 * 7)  # version 0: 7 s at timescale 600
    moov = struct.pack(">I4s", 8 + 8 + len(mvhd), b"moov") + struct.pack(
        ">I4s", 8 + len(mvhd), b"mvhd"
    ) + mvhd  # fmt: skip
    ftyp = struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0)
    assert audio_duration(ftyp + moov) == 7.0
    assert audio_duration(b"ID3\x04 an mp3") is None
    with pytest.raises(AudioUnreadable):
        audio_duration(ftyp)


def test_with_only_openai_api_key_openai_is_used_and_nothing_set_means_off() -> None:
    from pydantic import SecretStr

    from llm_bot_core.config import OPENAI_BASE_URL, TranscriptionSettings
    from llm_bot_core.media.transcription import (
        OpenAITranscriber,
        UnconfiguredTranscriber,
        build_transcriber,
    )

    plain = TranscriptionSettings()
    assert isinstance(build_transcriber(plain, openai_api_key=None), UnconfiguredTranscriber)
    assert isinstance(
        build_transcriber(plain, openai_api_key=SecretStr(" ")), UnconfiguredTranscriber
    )
    openai_only = build_transcriber(plain, openai_api_key=SecretStr("sk-openai"))
    assert isinstance(openai_only, OpenAITranscriber)
    assert str(openai_only._client.base_url).rstrip("/") == OPENAI_BASE_URL
    assert openai_only._client.api_key == "sk-openai"
    own_key = TranscriptionSettings(transcription_api_key=SecretStr("sk-own"))
    chosen = build_transcriber(own_key, openai_api_key=SecretStr("sk-openai"))
    assert chosen._client.api_key == "sk-own"  # type: ignore[attr-defined]


async def test_the_transcription_key_is_sent_as_a_bearer_token(
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
) -> None:
    fake_transcription.api_key = "gsk-secret"
    try:
        wrong = voice_settings(clean_db, llm_server, transcription_server, openai_api_key="x")
        async with running_app(wrong) as client:
            body = assert_error(await upload(client), 502, "transcription_unavailable")
            assert "401" in body["message"]
        right = voice_settings(
            clean_db,
            llm_server,
            transcription_server,
            openai_api_key="x",
            transcription_api_key="gsk-secret",
        )
        async with running_app(right) as client:
            assert (await upload(client)).status_code == 200
    finally:
        fake_transcription.api_key = None
    # The fake, like OpenAI, refuses a wrong key before reading the upload.
    assert [r.authorization for r in fake_transcription.requests] == ["Bearer gsk-secret"]
