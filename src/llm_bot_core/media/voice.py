"""The voice use case: check who may speak, measure the recording, transcribe it, account for it.

The transcript is returned, not stored: the client sends it on as the user's message
(`/v1/chat/handle` with `input_mode: "voice"`), so a voice message takes the same path through
memory as a typed one, and an empty or failed transcription leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from llm_bot_core.config import TranscriptionSettings
from llm_bot_core.errors import CoreError
from llm_bot_core.llm.base import Completion
from llm_bot_core.media.audio import AudioUnreadable, audio_duration
from llm_bot_core.media.transcription import Transcriber, TranscriptionNotConfigured
from llm_bot_core.metrics import LLM_LATENCY
from llm_bot_core.usage.budget import Budgets
from llm_bot_core.usage.ledger import TRANSCRIPTION, UsageLedger

log = logging.getLogger(__name__)

PURPOSE = TRANSCRIPTION


@dataclass(frozen=True, slots=True)
class VoiceText:
    text: str
    audio_seconds: float
    model: str
    language: str | None


class AudioTooLong(CoreError):
    code = "audio_too_long"


class AudioUnreadableError(CoreError):
    code = "audio_unreadable"


class TranscriptionEmpty(CoreError):
    code = "transcription_empty"


class VoiceService:
    """Turns a recording into the text of a user's message."""

    def __init__(
        self,
        *,
        transcriber: Transcriber,
        settings: TranscriptionSettings,
        ledger: UsageLedger,
        budgets: Budgets,
    ) -> None:
        self._transcriber = transcriber
        self._settings = settings
        self._ledger = ledger
        self._budgets = budgets

    @property
    def configured(self) -> bool:
        return self._transcriber.configured

    async def transcribe(
        self,
        audio: bytes,
        *,
        user_id: str,
        chat_id: str,
        filename: str,
        content_type: str,
        declared_seconds: float | None = None,
        language: str | None = None,
    ) -> VoiceText:
        """The recording's text; refuses (storing nothing) what cannot or may not be sent on.

        The duration is read from the container (OGG, WAV, MP4); `declared_seconds` (Telegram's
        duration, sent by the bot) only stands in for containers that are not read here."""
        if not self._transcriber.configured:
            raise TranscriptionNotConfigured()
        await self._budgets.check(user_id)
        seconds = self._duration(audio, declared_seconds)
        limit = self._settings.voice_max_seconds
        if seconds > limit:
            raise AudioTooLong(
                f"the recording is {math.ceil(seconds)} s long; at most {limit} s "
                "(VOICE_MAX_SECONDS) are transcribed"
            )
        started = time.perf_counter()
        try:
            transcript = await self._transcriber.transcribe(
                audio, filename=filename, content_type=content_type, language=language
            )
        except CoreError as exc:
            LLM_LATENCY.labels(PURPOSE, exc.code).observe(time.perf_counter() - started)
            raise
        LLM_LATENCY.labels(PURPOSE, "ok").observe(transcript.seconds)
        # The provider billed the call whatever it heard: accounted even when empty.
        self._ledger.record(
            PURPOSE,
            Completion(
                text="",
                prompt_tokens=transcript.prompt_tokens,
                completion_tokens=transcript.completion_tokens,
                model=transcript.model,
                seconds=transcript.seconds,
            ),
            user_id=user_id,
            chat_id=chat_id,
            audio_seconds=round(seconds, 3),
        )
        text = " ".join(transcript.text.split())
        if not text:
            raise TranscriptionEmpty()
        return VoiceText(
            text=text, audio_seconds=seconds, model=transcript.model, language=transcript.language
        )

    def _duration(self, audio: bytes, declared: float | None) -> float:
        if not audio:
            raise AudioUnreadableError("the upload is empty")
        try:
            measured = audio_duration(audio)
        except AudioUnreadable as exc:
            raise AudioUnreadableError(f"the recording cannot be read: {exc}") from exc
        if measured is not None:
            return measured
        if declared is not None:
            return declared
        raise AudioUnreadableError(
            "the duration of this format cannot be read (OGG/Opus, OGG/Vorbis, WAV and "
            "MP4/M4A can); send it with `duration` in seconds"
        )
