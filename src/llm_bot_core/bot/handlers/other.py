"""Everything a user can send that is not text: a polite "text only"."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.enums import ContentType
from aiogram.types import Message

from llm_bot_core.bot.delivery import reply
from llm_bot_core.bot.handlers.filters import Addressed
from llm_bot_core.bot.texts import Lang, t

# What a person sends on purpose; service messages (joins, pins, ...) are left alone.
USER_CONTENT = frozenset(
    {
        ContentType.STICKER,
        ContentType.PHOTO,
        ContentType.VIDEO,
        ContentType.VOICE,
        ContentType.VIDEO_NOTE,
        ContentType.AUDIO,
        ContentType.DOCUMENT,
        ContentType.ANIMATION,
        ContentType.LOCATION,
        ContentType.VENUE,
        ContentType.CONTACT,
        ContentType.POLL,
        ContentType.DICE,
        ContentType.STORY,
        ContentType.PAID_MEDIA,
    }
)


async def text_only(message: Message, lang: Lang) -> None:
    """Stickers, voice, ...: we understand text (and pictures, handlers/photos.py) only."""
    await reply(message, t("text_only", lang))


def create_router() -> Router:
    router = Router(name=__name__)
    # An album arrives as one message per item, the caption on one of them (answered as text):
    # the others are skipped instead of each getting its own "text only".
    router.message.register(
        text_only, F.content_type.in_(USER_CONTENT), ~F.media_group_id, Addressed()
    )
    return router
