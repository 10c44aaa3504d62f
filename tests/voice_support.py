"""Voice test helpers: the fake speech-to-text server and the recordings the tests send.

tests/fixtures/voice.ogg is a real OGG/Opus file (3 s of a 440 Hz tone, made with the wave
module and opusenc), like the voice messages Telegram clients record.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_bot_core.testing.fake_transcription import FakeTranscription, FakeTranscriptionServer

VOICE_OGG = (Path(__file__).parent / "fixtures" / "voice.ogg").read_bytes()
VOICE_SECONDS = 3.0


def tone_wav(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                for i in range(int(rate * seconds))
            )
        )
    return buffer.getvalue()


@pytest.fixture(scope="session", name="transcription_server")
def transcription_server_fixture() -> Iterator[FakeTranscriptionServer]:
    with FakeTranscriptionServer() as server:
        yield server


@pytest.fixture(name="fake_transcription")
def fake_transcription_fixture(
    transcription_server: FakeTranscriptionServer,
) -> Iterator[FakeTranscription]:
    transcription_server.fake.reset()
    yield transcription_server.fake
    transcription_server.fake.reset()
