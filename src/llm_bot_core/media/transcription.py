"""Speech to text over the OpenAI protocol: POST {base}/audio/transcriptions, multipart.

OpenAI (whisper-1, gpt-4o-mini-transcribe), Groq (whisper-large-v3-turbo) and local servers
(speaches/faster-whisper-server, whisper.cpp's server) all speak it; the official SDK is the
client, as for chat (llm/openai_compat.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import openai
from openai import AsyncOpenAI
from pydantic import SecretStr

from llm_bot_core.config import TranscriptionSettings
from llm_bot_core.errors import CoreError


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    model: str
    seconds: float
    """How long the provider took."""
    language: str | None = None
    prompt_tokens: int | None = None
    """Tokens, for providers that bill by them (gpt-4o-*-transcribe); None for whisper."""
    completion_tokens: int | None = None


class TranscriptionNotConfigured(CoreError):
    code = "transcription_not_configured"


class TranscriptionUnavailable(CoreError):
    code = "transcription_unavailable"


class TranscriptionRefusedAudio(CoreError):
    """The provider says the upload is no recording it can decode: the client's input, a 4xx."""

    code = "audio_unreadable"


class Transcriber(Protocol):
    """A speech-to-text endpoint; raises TranscriptionNotConfigured, TranscriptionUnavailable
    or TranscriptionRefusedAudio."""

    @property
    def configured(self) -> bool: ...

    @property
    def model(self) -> str: ...

    async def transcribe(
        self, audio: bytes, *, filename: str, content_type: str, language: str | None = None
    ) -> Transcript: ...

    async def aclose(self) -> None: ...


class OpenAITranscriber:
    """Transcriber backed by the official openai SDK (its retries, timeouts and errors)."""

    def __init__(
        self,
        settings: TranscriptionSettings,
        *,
        api_key: str,
        max_retries: int = 2,
        client: AsyncOpenAI | None = None,
    ) -> None:
        self._settings = settings
        self._client = client or AsyncOpenAI(
            api_key=api_key,
            base_url=settings.effective_base_url,
            timeout=settings.transcription_timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAioHttpClient(),
        )

    @property
    def configured(self) -> bool:
        return True

    @property
    def model(self) -> str:
        return self._settings.transcription_model

    async def transcribe(
        self, audio: bytes, *, filename: str, content_type: str, language: str | None = None
    ) -> Transcript:
        started = time.perf_counter()
        try:
            result = await self._client.audio.transcriptions.create(
                model=self.model,
                file=(filename, audio, content_type),
                response_format="json",
                language=language or openai.omit,
            )
        except openai.APIStatusError as exc:
            if exc.status_code in (400, 415, 422) and _refused_the_file(exc):
                raise TranscriptionRefusedAudio(
                    f"the speech-to-text provider cannot read the recording: {_detail(exc)}"
                ) from exc
            raise TranscriptionUnavailable(
                f"the speech-to-text provider answered {exc.status_code}: {_detail(exc)}"
            ) from exc
        except openai.APIError as exc:  # connection errors and timeouts, after the retries
            raise TranscriptionUnavailable(
                f"the speech-to-text provider did not answer: {type(exc).__name__}"
            ) from exc
        text = getattr(result, "text", None)
        if not isinstance(text, str):
            raise TranscriptionUnavailable("the speech-to-text provider returned no text")
        usage = getattr(result, "usage", None)
        return Transcript(
            text=text,
            model=self.model,
            seconds=time.perf_counter() - started,
            language=getattr(result, "language", None),
            prompt_tokens=getattr(usage, "input_tokens", None),
            completion_tokens=getattr(usage, "output_tokens", None),
        )

    async def aclose(self) -> None:
        await self._client.close()


class UnconfiguredTranscriber:
    """No endpoint configured: every call says what the operator can set."""

    MESSAGE = (
        "Voice messages are off: set TRANSCRIPTION_BASE_URL (and TRANSCRIPTION_API_KEY), "
        "or OPENAI_API_KEY to use OpenAI's whisper-1."
    )

    def __init__(self, settings: TranscriptionSettings) -> None:
        self._settings = settings

    @property
    def configured(self) -> bool:
        return False

    @property
    def model(self) -> str:
        return self._settings.transcription_model

    async def transcribe(
        self, audio: bytes, *, filename: str, content_type: str, language: str | None = None
    ) -> Transcript:
        raise TranscriptionNotConfigured(self.MESSAGE)

    async def aclose(self) -> None:
        return None


def build_transcriber(
    settings: TranscriptionSettings, *, openai_api_key: SecretStr | None, max_retries: int = 2
) -> Transcriber:
    """The process's transcriber: OpenAI-compatible when configured, else one that refuses."""
    if not settings.configured_with(openai_api_key):
        return UnconfiguredTranscriber(settings)
    return OpenAITranscriber(
        settings, api_key=settings.effective_api_key(openai_api_key), max_retries=max_retries
    )


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
    return str(exc.message)[:300]


# How OpenAI, Groq and the local servers word "this is not audio I can decode".
_BAD_FILE = (
    "file format",
    "invalid file",
    "audio file",
    "media file",
    "corrupt",
    "unsupported",
    "could not decode",
    "could not process file",
)


def _refused_the_file(exc: openai.APIStatusError) -> bool:
    body = exc.body
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("param") == "file":
        return True
    return any(marker in _detail(exc).lower() for marker in _BAD_FILE)
