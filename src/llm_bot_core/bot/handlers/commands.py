"""/start (a new conversation) and /help."""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable
from llm_bot_core.bot.delivery import reply
from llm_bot_core.bot.handlers.chat import error_text
from llm_bot_core.bot.texts import t

log = logging.getLogger(__name__)


async def start(message: Message, backend: BackendClient, request_id: str) -> None:
    """Close the chat's session in the backend, then greet."""
    language = message.from_user.language_code if message.from_user else None
    try:
        closed = await backend.reset_chat(chat_id=message.chat.id, request_id=request_id)
    except (BackendError, BackendUnavailable) as exc:
        log.warning("reset of chat %s failed: %s", message.chat.id, exc)
        await reply(message, error_text(exc, language))
        return
    log.info("chat %s reset (%d session closed)", message.chat.id, closed)
    name = message.from_user.first_name if message.from_user else ""
    await reply(message, t("greeting", language, name=name or "👋"))


async def help_(message: Message, bot: Bot) -> None:
    """List the commands."""
    language = message.from_user.language_code if message.from_user else None
    me = await bot.me()
    await reply(message, t("help", language, username=me.username or "bot"))


def create_router() -> Router:
    router = Router(name=__name__)
    router.message.register(start, CommandStart())
    router.message.register(help_, Command("help"))
    return router
