"""Photos and image documents, with or without a caption: fetched from Telegram, sent to the
backend as pictures of one message, answered like text.

An album arrives as one update per item, sharing a `media_group_id`, the caption on one of them.
The first item's handler collects the others for ALBUM_QUIET seconds after the latest one and
sends them all as one message (the backend refuses more than MAX_IMAGES with too_many_images);
the other items' handlers only add themselves.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import Message

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable
from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.delivery import reply, typing
from llm_bot_core.bot.handlers.chat import (
    ask_backend,
    deliver_answer,
    error_text,
    speaker,
    told_refusal,
)
from llm_bot_core.bot.handlers.filters import Addressed
from llm_bot_core.bot.notices import Notices
from llm_bot_core.bot.texts import Lang, t

log = logging.getLogger(__name__)

# Telegram sends an album's items within a fraction of a second of each other.
ALBUM_QUIET = 0.8
# Telegram serves bots files up to 20 MB (getFile); larger ones cannot be fetched.
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
# An album has at most 10 items.
ALBUM_MAX = 10
_PICTURE_ERRORS = ("images_not_supported", "invalid_image", "image_too_large", "too_many_images")


@dataclass
class _Album:
    messages: list[Message] = field(default_factory=list)
    grown: asyncio.Event = field(default_factory=asyncio.Event)


class Albums:
    """The albums being collected, by (chat id, media_group_id)."""

    def __init__(self, quiet: float = ALBUM_QUIET) -> None:
        self.quiet = quiet
        self._open: dict[tuple[int, str], _Album] = {}

    def add(self, message: Message) -> _Album | None:
        """Add an album item; the album when this item opened it (its handler sends it)."""
        assert message.media_group_id is not None
        key = (message.chat.id, message.media_group_id)
        album = self._open.get(key)
        if album is not None:
            album.messages.append(message)
            album.grown.set()
            return None
        album = self._open[key] = _Album([message])
        return album

    async def collected(self, message: Message, album: _Album) -> list[Message]:
        """Wait until no item came for `quiet` seconds; the album's items in order."""
        while True:
            album.grown.clear()
            try:
                await asyncio.wait_for(album.grown.wait(), self.quiet)
            except TimeoutError:
                break
        assert message.media_group_id is not None
        self._open.pop((message.chat.id, message.media_group_id), None)
        return sorted(album.messages, key=lambda m: m.message_id)[:ALBUM_MAX]


def _picture_of(message: Message) -> tuple[str, str, int | None] | None:
    """(file id, mime type, size) of the message's picture: a photo's largest size, or an
    image document."""
    if message.photo:
        largest = message.photo[-1]
        return largest.file_id, "image/jpeg", largest.file_size
    document = message.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        return document.file_id, document.mime_type or "image/jpeg", document.file_size
    return None


async def _download(bot: Bot, message: Message) -> tuple[bytes, str]:
    picture = _picture_of(message)
    assert picture is not None  # the filter let only pictures through
    file_id, mime_type, size = picture
    if size is not None and size > MAX_DOWNLOAD_BYTES:
        raise _TooLarge
    file = await bot.get_file(file_id)
    if file.file_path is None:
        raise _TooLarge  # Telegram gives no path for files it will not serve
    data = await bot.download_file(file.file_path)
    assert data is not None  # without a destination aiogram returns the bytes read
    return data.read(), mime_type


class _TooLarge(Exception):
    pass


def create_router() -> Router:
    router = Router(name=__name__)
    albums = Albums()

    async def on_picture(
        message: Message,
        text: str,
        bot: Bot,
        backend: BackendClient,
        settings: BotSettings,
        request_id: str,
        lang: Lang,
        notices: Notices,
    ) -> None:
        """A photo or image document (or an album of them), answered like a text message."""
        items = [message]
        if message.media_group_id is not None:
            album = albums.add(message)
            if album is None:
                return  # the album's first item sends it
            items = await albums.collected(message, album)
        # `text` is this item's caption without the bot's mention; an album's caption may
        # be on another item.
        caption = text if message.caption else next((m.caption for m in items if m.caption), "")
        await answer_pictures(
            message, caption or "", items, bot, backend, settings, request_id, lang, notices
        )

    router.message.register(
        on_picture, F.photo | F.document.mime_type.startswith("image/"), Addressed()
    )
    return router


async def answer_pictures(
    message: Message,
    caption: str,
    items: list[Message],
    bot: Bot,
    backend: BackendClient,
    settings: BotSettings,
    request_id: str,
    lang: Lang,
    notices: Notices,
) -> None:
    """Fetch the pictures, ask the backend and send its answer, "typing…" meanwhile."""
    user_id, _ = speaker(message)
    async with typing(bot, message, settings.typing_interval):
        try:
            images = [await _download(bot, item) for item in items]
        except _TooLarge:
            await reply(message, t("image_too_large", lang))
            return
        except TelegramBadRequest as exc:  # an expired or unknown file_id
            log.warning("could not fetch a picture in chat %s: %s", message.chat.id, exc)
            await reply(message, t("invalid_image", lang))
            return
        try:
            answer = await ask_backend(backend, message, caption, request_id, images=images)
        except (BackendError, BackendUnavailable) as exc:
            if await told_refusal(message, exc, lang, notices, user_id):
                return
            log.warning("backend failed for pictures in chat %s: %s", message.chat.id, exc)
            if isinstance(exc, BackendError) and exc.code in _PICTURE_ERRORS:
                await reply(message, t(exc.code, lang))
            else:
                await reply(message, error_text(exc, lang))
            return
    await deliver_answer(message, answer, lang, notices, user_id)
