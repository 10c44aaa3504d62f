"""When the bot should react to a message at all."""

from __future__ import annotations

import re
from typing import Any

from aiogram import Bot
from aiogram.enums import ChatType, MessageEntityType
from aiogram.filters import Filter
from aiogram.types import Message


class Addressed(Filter):
    """Private chats always; groups only when the bot is mentioned or replied to.

    Passes the message's text (or caption) to the handler as `text`, the mention removed.
    """

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, Any]:
        text = message.text or message.caption or ""
        if message.chat.type == ChatType.PRIVATE:
            return {"text": text}
        me = await bot.me()
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == me.id:
            return {"text": text}
        entities = message.entities or message.caption_entities or []
        for entity in entities:
            if (
                entity.type == MessageEntityType.TEXT_MENTION
                and entity.user is not None
                and entity.user.id == me.id
            ):
                return {"text": text}
            if (
                entity.type == MessageEntityType.MENTION
                and me.username
                and entity.extract_from(text).lower() == f"@{me.username.lower()}"
            ):
                return {"text": _without_mention(text, me.username)}
        return False


def _without_mention(text: str, username: str) -> str:
    cleaned = re.sub(rf"@{re.escape(username)}\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip() or text
