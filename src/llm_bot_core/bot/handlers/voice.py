"""Voice messages, audio files and video notes: transcribed by the backend, then answered as
if typed (the chat handler's path, drafts included), the transcript quoted first.

Each update runs in its own task (aiogram's polling and webhook both handle updates
concurrently), and the download and the transcription are awaited, never blocking: a long
recording in one chat holds up no other chat.
"""

from __future__ import annotations

import html
import logging

from aiogram import Bot, F, Router
from aiogram.enums import ChatType
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Audio, Message, ReplyParameters, VideoNote, Voice
from aiohttp import ClientError

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable
from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.delivery import reply, typing
from llm_bot_core.bot.handlers.chat import answer_text, error_text, speaker, told_refusal
from llm_bot_core.bot.handlers.filters import Addressed
from llm_bot_core.bot.media import FileTooLarge, download
from llm_bot_core.bot.notices import Notices
from llm_bot_core.bot.streaming import DraftGate
from llm_bot_core.bot.texts import Lang, t

log = logging.getLogger(__name__)

# The backend's voice codes and what the user is told; other codes as for a text message.
_VOICE_KEYS = {
    "transcription_not_configured": "voice_not_configured",
    "transcription_empty": "voice_empty",
    "transcription_unavailable": "voice_unavailable",
    "audio_unreadable": "voice_unreadable",
}


def recording(message: Message) -> tuple[Voice | Audio | VideoNote, str, str] | None:
    """The message's recording with the file name and MIME type it is sent under."""
    if message.voice is not None:
        return message.voice, "voice.ogg", message.voice.mime_type or "audio/ogg"
    if message.audio is not None:
        audio = message.audio
        return audio, audio.file_name or "audio.mp3", audio.mime_type or "audio/mpeg"
    if message.video_note is not None:
        return message.video_note, "video_note.mp4", "video/mp4"
    return None


def limit_text(seconds: int, lang: Lang) -> str:
    """ "5 min" / "90 s", as the limit reads in a reply."""
    if seconds % 60 == 0:
        return f"{seconds // 60} мин" if lang == "ru" else f"{seconds // 60} min"
    return f"{seconds} с" if lang == "ru" else f"{seconds} s"


def size_text(limit: int, lang: Lang) -> str:
    """ "20 MB" / "512 KB", as the size limit reads in a reply."""
    if limit >= 2**20:
        return f"{limit / 2**20:g} МБ" if lang == "ru" else f"{limit / 2**20:g} MB"
    return f"{limit // 1024} КБ" if lang == "ru" else f"{limit // 1024} KB"


# A quote is one message (4096 characters); five minutes of speech can be longer.
QUOTE_CHARS = 3500


def quote(transcript: str) -> str:
    """The transcript as Telegram HTML: a quote, so it reads as what was heard."""
    if len(transcript) > QUOTE_CHARS:
        transcript = transcript[: QUOTE_CHARS - 1].rstrip() + "…"
    return f"<blockquote>{html.escape(transcript)}</blockquote>"


async def answer_voice(
    message: Message,
    bot: Bot,
    backend: BackendClient,
    settings: BotSettings,
    request_id: str,
    lang: Lang,
    drafts: DraftGate,
    notices: Notices,
) -> None:
    """Download the recording, have it transcribed, show what was heard, answer it."""
    found = recording(message)
    if found is None:  # pragma: no cover - the router's filter admits only these
        return
    media, filename, mime = found
    user_id, _ = speaker(message)
    duration = getattr(media, "duration", None)
    if duration is not None and duration > settings.voice_max_seconds:
        limit = limit_text(settings.voice_max_seconds, lang)
        await reply(message, t("voice_too_long", lang, limit=limit))
        return
    async with typing(bot, message, settings.typing_interval):
        try:
            audio = await download(
                bot, media.file_id, max_bytes=settings.voice_max_bytes, size=media.file_size
            )
        except FileTooLarge:
            await reply(
                message, t("voice_too_large", lang, size=size_text(settings.voice_max_bytes, lang))
            )
            return
        except (TelegramAPIError, ClientError, TimeoutError) as exc:
            log.warning("could not download a recording in chat %s: %r", message.chat.id, exc)
            await reply(message, t("voice_unreadable", lang))
            return
        try:
            transcript = await backend.transcribe(
                user_id=user_id,
                chat_id=message.chat.id,
                audio=audio,
                filename=filename,
                content_type=mime,
                duration=duration,
                request_id=request_id,
            )
        except (BackendError, BackendUnavailable) as exc:
            await _refuse(message, exc, settings, lang, notices, user_id)
            return
    if settings.show_transcript:
        # In a group the quote answers the voice message, as the bot's answers do.
        to = None if message.chat.type == ChatType.PRIVATE else message.message_id
        try:
            await message.answer(
                quote(transcript),
                parse_mode="HTML",
                reply_parameters=ReplyParameters(message_id=to) if to else None,
            )
        except TelegramAPIError as exc:  # the answer matters more than the quote
            log.warning("could not quote the transcript in chat %s: %s", message.chat.id, exc)
    await answer_text(
        message,
        transcript,
        bot,
        backend,
        settings,
        request_id,
        lang,
        drafts,
        notices,
        input_mode="voice",
    )


async def _refuse(
    message: Message,
    exc: BackendError | BackendUnavailable,
    settings: BotSettings,
    lang: Lang,
    notices: Notices,
    user_id: int,
) -> None:
    if await told_refusal(message, exc, lang, notices, user_id):
        return
    if isinstance(exc, BackendError):
        if exc.code == "audio_too_long":
            limit = limit_text(settings.voice_max_seconds, lang)
            await reply(message, t("voice_too_long", lang, limit=limit))
            return
        if exc.code == "payload_too_large":
            await reply(
                message, t("voice_too_large", lang, size=size_text(settings.voice_max_bytes, lang))
            )
            return
        if exc.code in _VOICE_KEYS:
            log.info("voice in chat %s not transcribed: %s", message.chat.id, exc.code)
            await reply(message, t(_VOICE_KEYS[exc.code], lang))
            return
    log.warning("transcription failed for chat %s: %s", message.chat.id, exc)
    await reply(message, error_text(exc, lang))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(answer_voice, F.voice | F.audio | F.video_note, Addressed())
    return router
